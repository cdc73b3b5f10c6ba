"""`python -m sslx.main` whose checkpoint save of step $SSLX_TEST_HANG_STEP hangs just before
orbax's final rename (the data is written, the checkpoint not yet committed) after touching
$SSLX_TEST_HANG_MARKER, so a test can SIGKILL the process in the middle of that save.

It patches a private orbax class (`AtomicRenameTemporaryPath`, orbax-checkpoint 0.12): if orbax
renames it, this import fails or the marker never appears, and the test fails loudly."""

import asyncio
import os

from absl import app
from orbax.checkpoint._src.path import atomicity

from sslx import main

_HANG_STEP = os.environ["SSLX_TEST_HANG_STEP"]
_MARKER = os.environ["SSLX_TEST_HANG_MARKER"]
_finalize = atomicity.AtomicRenameTemporaryPath.finalize


async def _finalize_or_hang(self):
  if self._final_path.name == _HANG_STEP:
    with open(_MARKER, "w") as f:
      f.write(str(self.get()))  # the temporary directory being written
    await asyncio.sleep(3600)
  return await _finalize(self)


atomicity.AtomicRenameTemporaryPath.finalize = _finalize_or_hang

if __name__ == "__main__":
  app.run(main.main)
