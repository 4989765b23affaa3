"""Suite-wide settings.

torch's default of one thread per core makes small tensor work tens of times slower when the
test's own subprocesses (nodes, a coordinator, anvil) compete for the same two cores; the
daemons pin themselves to one thread for the same reason (`torch_threads` in their configs).
"""

import torch

torch.set_num_threads(1)
