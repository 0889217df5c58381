"""Sections with known behaviour for testing the GPU check's orchestration (run in its worker processes)."""
import os
import time

from lkconv.bench.gpu_sections import CheckFailed, Section


class Sleepy(Section):
    """'quick' finishes, 'slow' outlives any short deadline, 'later' is never reached."""
    name, title = 'sleepy', 'Sleepy'

    def plan(self, settings):
        return [dict(id='quick'), dict(id='slow'), dict(id='later')]

    def run(self, item, state, settings):
        time.sleep(60 if item['id'] == 'slow' else 0.1)
        return dict(slept=item['id'])


class Crashy(Section):
    """Item 'dies' kills its worker; 'wrong' finds a wrong result; 'raises' raises; the others pass."""
    name, title = 'crashy', 'Crashy'

    def plan(self, settings):
        return [dict(id=i) for i in ('first', 'dies', 'wrong', 'raises', 'cuda', 'last')] + \
            [dict(id='never', skip='not for this device')]

    def prepare(self, settings):
        return os.getpid()

    def run(self, item, pid, settings):
        if item['id'] == 'dies':
            os._exit(7)
        if item['id'] == 'wrong':
            raise CheckFailed('off by one', dict(value=41))
        if item['id'] == 'raises':
            raise ValueError('bad input')
        if item['id'] == 'cuda':
            raise RuntimeError('CUDA error: an illegal memory access was encountered')
        return dict(pid=pid)


SLEEPY, CRASHY = Sleepy(), Crashy()
