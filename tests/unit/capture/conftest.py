import os
import sys

HERE = os.path.dirname(__file__)
sys.path.insert(0, HERE)
# The packet_fate evaluator (tests/tools/packet_fate).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tools"))
