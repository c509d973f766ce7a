import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from netlab import Lab


@pytest.fixture
def lab():
    if os.geteuid() != 0:
        pytest.fail("the capture integration tests need root (network namespaces, iptables)")
    lab = Lab().up()
    try:
        yield lab
    finally:
        lab.down()
