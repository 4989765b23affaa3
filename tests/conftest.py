"""Suite-wide settings.

torch's default of one thread per core makes small tensor work tens of times slower when the
test's own subprocesses (nodes, a coordinator, anvil) compete for the same two cores; the
daemons pin themselves to one thread for the same reason (`torch_threads` in their configs).

Account locks (protocol/keys/account_lock.py) go to a directory of this run: every anvil is chain
31337 with the same dev accounts, so a shared ~/.thinkmesh/locks would make two test runs, or a
test run and a devnet, refuse each other. Subprocesses inherit the variable.
"""

import os
import tempfile

import torch

torch.set_num_threads(1)
os.environ["THINKMESH_LOCK_DIR"] = tempfile.mkdtemp(prefix="thinkmesh-test-locks-")
