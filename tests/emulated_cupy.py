"""The CuPy that ratsweep.rational.cuda calls, made from the real CuPy, launching kernels/rational.cu
on the CPU emulator.

Every CuPy object the backend touches is a double of the real class or function
(`unittest.mock.create_autospec(..., spec_set=True)`), so an attribute the real CuPy lacks fails here
as it would on a GPU. CuPy's compiled callables carry no signature that mock can check, so each double
first makes the same call on the real CuPy: it checks the arguments' number, names and types (tuple
grid and block, kernel arguments it can pass, a stream with .ptr, integer handles, tuple options)
before it needs a device, and then stops at the CUDA driver this machine lacks. Only a call the real
CuPy accepted goes on to the emulator: compile the source for the CPU, answer the occupancy query, run
the launch. Stream is CuPy's own class (wrapping an external stream needs no device). Launches are recorded so tests
can count them.
"""

import re
import tempfile
from pathlib import Path
from unittest import mock

import cupy
import emulator
from cupy.cuda import driver, function, runtime
from cupy_backends.cuda.api.driver import CUDADriverError
from cupy_backends.cuda.api.runtime import CUDARuntimeError

BLOCKS_PER_SM = 2  # what the occupancy query answers
DEVICE = 0  # the device the emulated tensors are on


def _stopped_at_the_driver(error: Exception) -> bool:
    if isinstance(error, (CUDARuntimeError, CUDADriverError)):
        return True
    return isinstance(error, RuntimeError) and "libcuda" in str(error)  # no driver library at all


def check_with_real_cupy(real, *args, **kwargs) -> None:
    """Makes the call on the real CuPy: it must be accepted, i.e. succeed (on a machine with a GPU)
    or fail only where it reaches the CUDA driver. Anything else (TypeError, AttributeError, ...)
    is a call the real CuPy refuses, and propagates."""
    try:
        real(*args, **kwargs)
    except Exception as e:
        if not _stopped_at_the_driver(e):
            raise


_bare_function = function.Function.__new__(function.Function)  # a real Function of no module: CuPy checks a launch's arguments, then the driver refuses it
_FOLDER = Path(tempfile.mkdtemp(prefix="emulated-cupy-"))
_libraries: dict[tuple, object] = {}  # the emulator built per set of -D options, shared by every EmulatedCupy


def _library(code: str, defines: tuple):
    if (code, defines) not in _libraries:
        _libraries[code, defines] = emulator.load(emulator.build(code, defines, _FOLDER / str(len(_libraries))))
    return _libraries[code, defines]


class EmulatedCupy:
    def __init__(self):
        self.launches: list[tuple] = []  # (kind, vec, grid, block, stream pointer)
        self.launch_devices: list[int] = []  # the device current at each launch
        self.compiles: list[tuple] = []  # the -D options of each RawModule built
        self.device_switches: list[int] = []  # devices entered with cupy.cuda.Device
        self.current_device = DEVICE
        self.capturing = False  # whether the stream a launch goes to is capturing a CUDA graph
        self.on_launch = None  # called with (replay, args) after each launch, where replay() launches again
        self.module = mock.create_autospec(cupy, spec_set=True)  # what cuda._cupy() returns
        cuda = self.module.cuda
        cuda.Stream = cupy.cuda.Stream
        cuda.Device.side_effect = self._device
        cuda.runtime.getDevice.side_effect = self._get_device
        cuda.runtime.streamIsCapturing.side_effect = self._stream_is_capturing
        for module, error in {"runtime": "CUDARuntimeError", "driver": "CUDADriverError", "compiler": "CompileException",
                              "nvrtc": "NVRTCError"}.items():  # CuPy's own error types, to be caught
            setattr(getattr(cuda, module), error, getattr(getattr(cupy.cuda, module), error))
        cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor.side_effect = self._occupancy
        self.module.RawModule.side_effect = self._raw_module

    def _device(self, *args, **kwargs):
        check_with_real_cupy(cupy.cuda.Device, *args, **kwargs)
        device = args[0] if args else kwargs["device"]
        self.device_switches.append(device)
        context = mock.create_autospec(cupy.cuda.Device, instance=True, spec_set=True)
        outside = []

        def enter(*_):
            outside.append(self.current_device)
            self.current_device = device
            return context

        def leave(*_):
            self.current_device = outside.pop()
            return False

        context.__enter__.side_effect, context.__exit__.side_effect = enter, leave
        return context

    def _get_device(self, *args, **kwargs):
        check_with_real_cupy(runtime.getDevice, *args, **kwargs)
        return self.current_device

    def _stream_is_capturing(self, *args, **kwargs):
        check_with_real_cupy(runtime.streamIsCapturing, *args, **kwargs)
        return self.capturing

    def _occupancy(self, *args, **kwargs):
        check_with_real_cupy(driver.occupancyMaxActiveBlocksPerMultiprocessor, *args, **kwargs)
        return BLOCKS_PER_SM

    def _raw_module(self, *args, **kwargs):
        real = cupy.RawModule(*args, **kwargs)  # compiles lazily: constructing it checks the arguments
        defines = tuple(o for o in real.options if o.startswith("-D"))
        self.compiles.append(defines)
        library = _library(real.code, defines)
        module = mock.create_autospec(cupy.RawModule, instance=True, spec_set=True)
        module.get_function.side_effect = lambda *a, **k: self._get_function(real, library, *a, **k)
        return module

    def _get_function(self, real, library, *args, **kwargs):
        check_with_real_cupy(real.get_function, *args, **kwargs)
        (name,) = args or kwargs.values()
        assert name in real.name_expressions, f"{name!r} is not among the module's name expressions {real.name_expressions}"
        kind, storage, vec = re.fullmatch(r"rational_(\w+)<(.+), (\d+)>", name).groups()
        launch = self._launcher(library, kind, emulator.STORAGE_CODES[storage], int(vec))
        kernel = mock.create_autospec(function.Function, instance=True, spec_set=True)
        kernel.ptr = 0  # a null CUfunction: the real occupancy query checks the type, then the driver refuses it
        kernel.side_effect = launch
        raw = mock.create_autospec(cupy.RawKernel, instance=True, spec_set=True)
        raw.kernel = kernel
        raw.side_effect = launch
        return raw

    def _launcher(self, library, kind: str, dtype_code: int, vec: int):
        run = getattr(library, f"emu_{kind}")

        def launch(*args, **kwargs):
            check_with_real_cupy(_bare_function, *args, **kwargs)
            grid, block, kernel_args = args[:3]
            stream = kwargs["stream"] if "stream" in kwargs else args[4] if len(args) > 4 else None
            assert stream is not None, "a launch without a stream runs on CuPy's current stream, not torch's"
            self.launches.append((kind, vec, grid, block, stream.ptr))
            self.launch_devices.append(self.current_device)

            def replay():
                run(dtype_code, vec, grid[0], block[0], *kernel_args)

            replay()
            if self.on_launch is not None:
                self.on_launch(replay, kernel_args)

        return launch
