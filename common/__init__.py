"""What every layer shares and nothing of the project's own underlies: the error type of user mistakes, the
classes and labels, metrics, mask post-processing and figures. It imports no other package of the project and
no Lightning, so that evaluation and reporting run without the training stack."""
