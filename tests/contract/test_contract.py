"""The contract suite on every installed adapter: memory, rq and procrastinate."""

from cutover.testing.contract import BackendContract


class TestContract(BackendContract):
    pass
