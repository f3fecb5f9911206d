"""Kernel coverage on stock kernels without KCOV: an ftrace probe module counting calls of the
procfs/sysctl functions the model mirrors (procfuzz_kcov.c), the per-pin lists of those functions
(lists.py, committed under targets/kernels/) and its build (build.py)."""

# The probe's parameters (procfuzz_kcov.c). A campaign's feedback counts what the program's own
# tasks ran and does not wait: the asynchronous part of its teardown (cleanup_net in a
# workqueue, RCU callbacks) would otherwise land in whichever program runs next, and waiting
# for it doubled a program's guest time (procfuzz bench kcov_probe). `procfuzz coverage` waits
# for the teardown and counts every call: exact totals per corpus.
FEEDBACK = "settle=0 async=0"
EXACT = "settle=1 async=1"
