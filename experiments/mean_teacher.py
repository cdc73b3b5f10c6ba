"""Mean Teacher (Tarvainen & Valpola 2017): the student's softmax on one view of an unlabelled
image is pulled (squared error) towards the EMA teacher's on another view; the consistency weight
ramps up over semi.unsup_warmup of the run. As USB (and the paper's two noisy views of the same
kind): the student and the teacher each see their own weak view (semi.weak); semi.strong is not
used.
"""

from experiments import _semisup
from sslx.losses import mean_teacher
from sslx.method import Method


def get_method(config) -> Method:
  def objective(u: _semisup.Unlabelled):
    return mean_teacher(u.weak, u.teacher), {}, u.state

  return _semisup.semi_supervised_method(config, objective, strong=False, teacher=True)
