"""The part of CuPy that ratsweep.rational.cuda calls, running kernels/rational.cu on the CPU emulator.

With it (and the device queries patched, see test_cuda_kernels_emulated.py) cuda.py's own code runs
on CPU tensors: the plans, the launch geometry, the argument order, the workspace, the outputs.
Functions record their launches so a test can count them."""

import re
import tempfile
from pathlib import Path
from types import SimpleNamespace

import emulator

BLOCKS_PER_SM = 2  # what the occupancy query answers


class Function:
    def __init__(self, library, kind: str, dtype_code: int, vec: int, launches: list):
        self.library, self.kind, self.dtype_code, self.vec = library, kind, dtype_code, vec
        self.ptr = id(self)
        self.launches = launches

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        self.launches.append((self.kind, self.vec, grid, block, stream.ptr))
        getattr(self.library, f"emu_{self.kind}")(self.dtype_code, self.vec, grid[0], block[0], *args)


class EmulatedCupy:
    def __init__(self):
        self.launches: list[tuple] = []
        self.compiles: list[tuple] = []
        self._folder = Path(tempfile.mkdtemp(prefix="emulated-cupy-"))
        self._libraries: dict[tuple, object] = {}
        self.cuda = SimpleNamespace(
            Device=_NoDevice,
            ExternalStream=lambda ptr, device: SimpleNamespace(ptr=ptr, device=device),
            driver=SimpleNamespace(occupancyMaxActiveBlocksPerMultiprocessor=lambda ptr, block, shared: BLOCKS_PER_SM),
            runtime=SimpleNamespace(getDevice=lambda: None),  # the "device" of CPU tensors
        )

    def RawModule(self, code, options, name_expressions):  # noqa: N802  (CuPy's name)
        defines = tuple(o for o in options if o.startswith("-D"))
        self.compiles.append(defines)
        if defines not in self._libraries:
            folder = self._folder / str(len(self._libraries))
            self._libraries[defines] = emulator.load(emulator.build(code, defines, folder))
        library, launches = self._libraries[defines], self.launches

        def get_function(expression):
            kind, storage, vec = re.fullmatch(r"rational_(\w+)<(.+), (\d+)>", expression).groups()
            return Function(library, kind, emulator.STORAGE_CODES[storage], int(vec), launches)

        return SimpleNamespace(get_function=get_function)


class _NoDevice:
    def __init__(self, index):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
