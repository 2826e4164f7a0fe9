"""What the interpreter cases share: the reference backend, and the judgment of a
kernel against the float64 truth relative to the float32 reference's own error
(``fastrnn.testing``)."""
from fastrnn.backends.reference import ReferenceBackend
from fastrnn.testing import check, expect  # noqa: F401

REF = ReferenceBackend()
