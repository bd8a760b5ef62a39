"""Static performance model of the rational activation's CUDA kernels, read from their machine code.

    python benchmarks/kernel_static.py                         # configs (5,4)A (3,3)B (8,8)C (1,1)A
    python benchmarks/kernel_static.py --config 5,4,A --output benchmarks/results/kernel_static.md

No GPU needed, only nvcc and cuobjdump (PATH, or the bin folders of the nvidia-* pip wheels). Per
degree/version config it compiles kernels/rational.cu as CI does (all ten instances: forward and
backward x float4, float1, double2, half8, bf16x8), reads registers and spills from ptxas -v, finds
each kernel's grid-stride loop in the SASS, counts what one iteration issues and how many elements it
handles, and predicts the fraction of the device-to-device copy bandwidth the kernel can reach on an
H100 SXM and an H200:

    compute time per element = max(instructions / issue rate, busiest pipe's instructions / its rate)
    memory time per element  = bytes moved / copy bandwidth
    predicted fraction       = min(1, memory time / compute time)

Modelled: the steady state of the bulk loop on every SM, each instruction taking an issue slot and a
slot on its pipe at the sm_90 rates of the CUDA C++ Programming Guide's throughput table. One
iteration is its common path: code skipped by a branch around a call (the IEEE division/reciprocal
slow paths, the kernels' out-of-line rare paths) is left out and counted apart; at any other branch
inside the loop the side laid out first is counted (the report says how many there are). Not
modelled: latency (enough warps and loads in flight to hide it are assumed), caches, occupancy, the
load/store unit's throughput (narrow loads cost issue slots only here), tail effects (the last
partial wave, the remainder and scalar-tail loops) and the backward kernel's once-per-block reduction
of the coefficient gradients. The prediction is an upper bound for the code as compiled: a kernel
predicted below its target will miss it; one predicted above it can still miss it for a reason left
out here.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, or imported from a test
    sys.path.insert(0, str(ROOT))

from ratsweep.rational import cuda  # noqa: E402

KERNEL_SOURCE = ROOT / "kernels" / "rational.cu"
DEFAULT_CONFIGS = (((5, 4), "A"), ((3, 3), "B"), ((8, 8), "C"), ((1, 1), "A"))
TARGETS = {"forward": 0.80, "backward": 0.75}  # fraction of copy bandwidth, wide (VEC > 1) kernels
STREAMS = {"forward": (1, 1), "backward": (2, 1)}  # (arrays read, arrays written) per element: x -> y; x, dy -> dx
# Storage type as the kernels' template names spell it -> torch dtype (for its size and name).
STORAGE_DTYPES = {storage: dtype for dtype, (storage, _) in cuda._STORAGE.items()}

# ---------------------------------------------------------------------------------------------------
# The machine. Per SM per clock on sm_90 (CUDA C++ Programming Guide, "Arithmetic Instructions"
# throughput table, compute capability 9.0), in thread-instructions (a warp instruction is 32):
ISSUE_RATE = 128  # 4 schedulers x 1 warp instruction per clock
PIPE_RATES = {
    "fma": 128,  # FP32 add/multiply/FMA; both halves of the FMA pipe (Nsight: fmaheavy + fmalite)
    "fmaheavy": 64,  # the half that also runs IMAD (integer multiply-add 64/clk): IMAD takes a slot on both
    "alu": 64,  # integer add/logic/shift/compare 64/clk; also FP32 compare/min/max/select ("compare,
    # minimum, maximum" 64/clk) and the fast FP32 -> FP16 pack of Ampere and later (Nsight Compute's
    # ALU pipe description; the BF16 pack assumed alike)
    "fp64": 64,  # FP64 add/multiply/FMA
    "xu": 16,  # MUFU (reciprocal, rsqrt, exp2, ...) 16/clk and the other type conversions 16/clk
}

# SASS opcode -> (class it is reported under, pipes it occupies besides an issue slot). Looked up by
# the longest dotted prefix, so HADD2.F32 (fp16 -> fp32 conversion) differs from HADD2 (arithmetic)
# and HFMA2.MMA from HFMA2. Classes follow what the instruction is for; pipes what it costs:
#   F2FP (pack two FP32 into f16x2/bf16x2): conversion, ALU pipe 64/clk (the fast pack, not XU's 16);
#   HADD2.F32 (one fp16 -> fp32): conversion, FMA pipe 128/clk (fp16x2 arithmetic runs there on GH100);
#   HFMA2.MMA: ptxas's way to move a constant into a register through the tensor datapath, which is
#   otherwise idle here: a move (integer class), issue only;
#   memory, control and uniform-datapath instructions: issue only (the memory side is the roofline's
#   bandwidth term; LSU/MIO throughput is far above what DRAM feeds).
# An opcode missing here counts as "other" (issue only) and is printed: extend the table.
OPCODES = {
    # FP32 arithmetic; compares, min/max and selects run on the ALU pipe
    "FADD": ("fp32", ("fma",)), "FMUL": ("fp32", ("fma",)), "FFMA": ("fp32", ("fma",)),
    "FFMA32I": ("fp32", ("fma",)), "FMUL32I": ("fp32", ("fma",)), "FADD32I": ("fp32", ("fma",)),
    "FSWZADD": ("fp32", ("fma",)),
    "HADD2": ("fp32", ("fma",)), "HMUL2": ("fp32", ("fma",)), "HFMA2": ("fp32", ("fma",)),  # fp16x2
    "FSETP": ("fp32", ("alu",)), "FSET": ("fp32", ("alu",)), "FMNMX": ("fp32", ("alu",)),
    "FSEL": ("fp32", ("alu",)), "HSETP2": ("fp32", ("alu",)),
    "FCHK": ("fp32", ("alu",)),  # division range check; pipe assumed (a compare)
    "HMNMX2": ("fp32", ("alu",)),
    # FP64
    "DADD": ("fp64", ("fp64",)), "DMUL": ("fp64", ("fp64",)), "DFMA": ("fp64", ("fp64",)),
    "DSETP": ("fp64", ("fp64",)), "DMNMX": ("fp64", ("fp64",)),
    # transcendental unit
    "MUFU": ("mufu", ("xu",)),
    # conversions
    "F2F": ("conversion", ("xu",)), "F2I": ("conversion", ("xu",)), "I2F": ("conversion", ("xu",)),
    "I2I": ("conversion", ("xu",)), "FRND": ("conversion", ("xu",)), "F2FP": ("conversion", ("alu",)),
    "HADD2.F32": ("conversion", ("fma",)),
    # integer and logic; IMAD (also ptxas's IMAD.MOV/IMAD.SHL/IMAD.IADD) on the heavy FMA half
    "IADD3": ("integer", ("alu",)), "IADD": ("integer", ("alu",)), "VIADD": ("integer", ("alu",)),
    "IABS": ("integer", ("alu",)), "IMNMX": ("integer", ("alu",)), "VIMNMX": ("integer", ("alu",)),
    "VIADDMNMX": ("integer", ("alu",)), "ISETP": ("integer", ("alu",)), "LOP3": ("integer", ("alu",)),
    "LOP": ("integer", ("alu",)), "PLOP3": ("integer", ("alu",)), "SHF": ("integer", ("alu",)),
    "SHL": ("integer", ("alu",)), "SHR": ("integer", ("alu",)), "LEA": ("integer", ("alu",)),
    "PRMT": ("integer", ("alu",)), "SEL": ("integer", ("alu",)), "MOV": ("integer", ("alu",)),
    "P2R": ("integer", ("alu",)), "R2P": ("integer", ("alu",)), "CS2R": ("integer", ("alu",)),
    "S2R": ("integer", ("alu",)), "BMSK": ("integer", ("alu",)), "SGXT": ("integer", ("alu",)),
    "VOTE": ("integer", ("alu",)), "MATCH": ("integer", ("alu",)),
    "FLO": ("integer", ("xu",)), "POPC": ("integer", ("xu",)), "BREV": ("integer", ("xu",)),  # 16/clk
    "IMAD": ("integer", ("fma", "fmaheavy")), "IMUL": ("integer", ("fma", "fmaheavy")),
    "IDP": ("integer", ("fma", "fmaheavy")),
    "HFMA2.MMA": ("integer", ()),
    # memory
    "LDG": ("memory", ()), "STG": ("memory", ()), "LDS": ("memory", ()), "STS": ("memory", ()),
    "LD": ("memory", ()), "ST": ("memory", ()), "LDL": ("memory", ()), "STL": ("memory", ()),
    "LDC": ("memory", ()), "ATOM": ("memory", ()), "ATOMG": ("memory", ()), "ATOMS": ("memory", ()),
    "RED": ("memory", ()), "SHFL": ("memory", ()), "MEMBAR": ("memory", ()), "CCTL": ("memory", ()),
    "ERRBAR": ("memory", ()), "CGAERRBAR": ("memory", ()), "FENCE": ("memory", ()),
    # control flow and synchronization
    "BRA": ("control", ()), "BRX": ("control", ()), "JMP": ("control", ()), "CALL": ("control", ()),
    "RET": ("control", ()), "EXIT": ("control", ()), "BSSY": ("control", ()), "BSYNC": ("control", ()),
    "BREAK": ("control", ()), "BMOV": ("control", ()), "WARPSYNC": ("control", ()),
    "ENDCOLLECTIVE": ("control", ()), "BAR": ("control", ()), "NOP": ("control", ()),
    "YIELD": ("control", ()), "DEPBAR": ("control", ()), "NANOSLEEP": ("control", ()),
    # uniform datapath (one value per warp)
    "ULDC": ("uniform", ()), "UMOV": ("uniform", ()), "UIADD3": ("uniform", ()), "UIMAD": ("uniform", ()),
    "USHF": ("uniform", ()), "ULEA": ("uniform", ()), "ULOP3": ("uniform", ()), "UISETP": ("uniform", ()),
    "USEL": ("uniform", ()), "UPRMT": ("uniform", ()), "UFLO": ("uniform", ()), "UPOPC": ("uniform", ()),
    "UPLOP3": ("uniform", ()), "R2UR": ("uniform", ()), "S2UR": ("uniform", ()), "VOTEU": ("uniform", ()),
    "ELECT": ("uniform", ()),
}
CLASSES = ("fp32", "fp64", "mufu", "conversion", "integer", "memory", "control", "uniform", "other")

# The devices. SM counts: NVIDIA H100 Tensor Core GPU Architecture whitepaper (H100 SXM5: 132 SMs);
# the H200 is the same GH100 part with 132 SMs and faster HBM (H200 datasheet). Bandwidths: HBM spec
# from the datasheets (H100 SXM 3.35 TB/s HBM3, H200 4.8 TB/s HBM3e) times the fraction a large
# device-to-device copy reaches, which is what the project's targets are measured against
# (benchmarks/rational_kernels.py measures it on the GPU: pass the measured value here).
CLOCK_GHZ = 1.755  # assumed sustained SM clock under load (max boost 1.98 GHz on both parts)
COPY_EFFICIENCY = 0.90  # assumed copy rate / HBM spec


@dataclass(frozen=True)
class Device:
    name: str
    sms: int
    hbm_bytes_per_s: float
    clock_ghz: float = CLOCK_GHZ
    copy_efficiency: float = COPY_EFFICIENCY

    @property
    def copy_bytes_per_s(self) -> float:
        return self.hbm_bytes_per_s * self.copy_efficiency


def devices(clock_ghz: float = CLOCK_GHZ, copy_efficiency: float = COPY_EFFICIENCY) -> tuple[Device, ...]:
    return (
        Device("H100 SXM", 132, 3.35e12, clock_ghz, copy_efficiency),
        Device("H200", 132, 4.8e12, clock_ghz, copy_efficiency),
    )


# ---------------------------------------------------------------------------------------------------
# Tools


def cuda_tool(name: str) -> str | None:
    """Path of a CUDA command-line tool: PATH first, then the bin folders of the installed `nvidia`
    pip packages (nvidia/cu13/bin, nvidia/cuda_nvcc/bin, ...), then triton's bundled CUDA tools
    (CUDA 13's `cuobjdump -sass` runs nvdisasm, which the nvidia-cu13 wheel lacks and triton ships)."""
    found = shutil.which(name)
    if found:
        return found
    folders = []
    nvidia = importlib.util.find_spec("nvidia")
    if nvidia is not None:
        for location in nvidia.submodule_search_locations or ():
            folders += sorted(Path(location).glob("*/bin"))
    triton = importlib.util.find_spec("triton")
    if triton is not None:
        folders += [Path(location) / "backends" / "nvidia" / "bin" for location in triton.submodule_search_locations or ()]
    for folder in folders:
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def missing_tools() -> list[str]:
    """The tools this model needs that are not found (c++filt comes with binutils)."""
    missing = [name for name in ("nvcc", "cuobjdump") if cuda_tool(name) is None]
    return missing + ([] if shutil.which("c++filt") else ["c++filt"])


def _run(command: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@functools.cache
def tool_version(name: str) -> str:
    """The 'Cuda compilation tools, release ...' line of `name --version`."""
    lines = _run([cuda_tool(name), "--version"]).stdout.strip().splitlines()
    return next((line for line in lines if line.startswith("Cuda compilation tools")), lines[-1])


def kernel_options(degrees, version: str, defines: dict | None = None) -> tuple[str, ...]:
    """The launcher's compile options (cuda.compile_options), with some -D macros replaced."""
    defines = defines or {}
    kept = [o for o in cuda.compile_options(degrees, version) if o.removeprefix("-D").split("=")[0] not in defines]
    return (*kept, *(f"-D{name}={value}" for name, value in defines.items()))


def nvcc_arguments(options: tuple[str, ...], arch: str, output: str) -> list[str]:
    """CI's offline build of every instance, run from the repository root; -ftz=true as CuPy adds."""
    return ["-cubin", f"-arch={arch}", "-Xptxas", "-v", "-DRS_INSTANTIATE", *options, "-ftz=true",
            str(KERNEL_SOURCE.relative_to(ROOT)), "-o", output]


@dataclass(frozen=True)
class Build:
    command: str  # as typed from the repository root
    ptxas_log: str
    sass: str


@functools.cache
def build(options: tuple[str, ...], arch: str = "sm_90") -> Build:
    """Compile once per (options, arch) in this process (the source is read at the first call)."""
    with tempfile.TemporaryDirectory(prefix="kernel-static-") as tmp:
        cubin = str(Path(tmp) / "rational.cubin")
        ptxas_log = _run([cuda_tool("nvcc"), *nvcc_arguments(options, arch, cubin)]).stderr
        env = dict(os.environ)
        nvdisasm = cuda_tool("nvdisasm")
        if nvdisasm:
            env["NVDISASM_PATH"] = str(Path(nvdisasm).parent)
        sass = _run([cuda_tool("cuobjdump"), "-sass", cubin], env).stdout
    return Build(" ".join(["nvcc", *nvcc_arguments(options, arch, "rational.cubin")]), ptxas_log, sass)


# ---------------------------------------------------------------------------------------------------
# ptxas resources and SASS


@dataclass(frozen=True)
class Resources:
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int


def parse_ptxas(log: str) -> dict[str, Resources]:
    """Registers and spills per mangled entry name, from `ptxas -v` (one block per entry function)."""
    resources = {}
    for block in re.split(r"Compiling entry function ", log)[1:]:
        name = re.match(r"'(\w+)'", block).group(1)
        spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", block)
        registers = re.search(r"Used (\d+) registers", block)
        if spills is None or registers is None:
            raise ValueError(f"ptxas -v output for {name} lacks spills or registers:\n{block}")
        resources[name] = Resources(int(registers.group(1)), int(spills.group(1)), int(spills.group(2)))
    return resources


@dataclass(frozen=True)
class Instruction:
    address: int
    predicate: str  # "" when unconditional, e.g. "P0", "!P0"
    opcode: str  # with modifiers, e.g. "LDG.E.128.CONSTANT"
    operands: str

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]

    @property
    def conditional(self) -> bool:
        return self.predicate not in ("", "PT", "UPT")

    @property
    def target(self) -> int | None:
        """Branch target address (the last address in a BRA's operands)."""
        if self.base != "BRA":
            return None
        addresses = re.findall(r"0x([0-9a-f]+)", self.operands)
        return int(addresses[-1], 16) if addresses else None

    @property
    def global_access_bytes(self) -> int:
        """Bytes per thread of a global load/store (LDG/STG: .128, .64, .U16, ...; 4 by default)."""
        modifiers = set(self.opcode.split(".")[1:])
        for modifier, size in (("128", 16), ("64", 8), ("U16", 2), ("S16", 2), ("U8", 1), ("S8", 1)):
            if modifier in modifiers:
                return size
        return 4

    @property
    def written_registers(self) -> set[str]:
        """General registers the instruction writes: its first operand, with the next ones for
        64- and 128-bit results (.64, .128, IMAD.WIDE, FP64 arithmetic). Stores write none."""
        first = self.operands.split(",")[0].strip()
        if not re.fullmatch(r"R\d+", first) or self.base in ("STG", "STS", "STL", "ST", "RED"):
            return set()
        modifiers = self.opcode.split(".")[1:]
        width = 4 if "128" in modifiers else 2 if ({"64", "WIDE"} & set(modifiers) or self.base in ("DADD", "DMUL", "DFMA")) else 1
        return {f"R{int(first[1:]) + k}" for k in range(width)}

    @property
    def read_registers(self) -> set[str]:
        """General registers among the operands after the written one (RZ excluded)."""
        operands = self.operands.split(",", 1)[1] if self.written_registers else self.operands
        return set(re.findall(r"\bR\d+\b", operands))

    @property
    def address_register(self) -> str | None:
        """The general register holding the address of a memory access (`[R6.64+0x10]`: R6)."""
        match = re.search(r"\[(R\d+)(?:\.64)?(?:\+-?0x[0-9a-f]+)?\]", self.operands)
        return match.group(1) if match else None


_FUNCTION = re.compile(r"^\s*Function : (\S+)")
_INSTRUCTION = re.compile(
    r"^\s*/\*(?P<address>[0-9a-f]+)\*/\s+(?:@(?P<predicate>!?U?P[T0-9]+)\s+)?(?P<opcode>[A-Z0-9_][A-Z0-9_.]*)(?P<operands>[^;]*);"
)


def parse_sass(text: str) -> dict[str, list[Instruction]]:
    """Instructions of every function in `cuobjdump -sass` output, by mangled name."""
    functions: dict[str, list[Instruction]] = {}
    current = None
    for line in text.splitlines():
        if header := _FUNCTION.match(line):
            current = functions.setdefault(header.group(1), [])
        elif current is not None and (match := _INSTRUCTION.match(line)):
            current.append(Instruction(int(match["address"], 16), match["predicate"] or "", match["opcode"], match["operands"].strip()))
    return functions


def demangle(names: list[str]) -> dict[str, str]:
    proc = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    return dict(zip(names, proc.stdout.splitlines()))


def classify(opcode: str) -> tuple[str, tuple[str, ...]]:
    """(class, pipes) of an opcode by its longest known dotted prefix; ("other", ()) if unknown."""
    parts = opcode.split(".")
    for length in range(len(parts), 0, -1):
        entry = OPCODES.get(".".join(parts[:length]))
        if entry is not None:
            return entry
    return "other", ()


# ---------------------------------------------------------------------------------------------------
# The hot loop


@dataclass(frozen=True)
class Loop:
    """One iteration of a loop along its common path (see common_path)."""

    first_address: int
    last_address: int  # the backward branch
    opcodes: Counter  # instructions issued per iteration, by full opcode
    off_path: int  # instructions in the loop's range not on the common path (slow paths, rare branches)
    loads: Counter  # global loads on the path from addresses that change per iteration, by bytes per thread
    invariant_loads: int  # global loads on the path from loop-invariant addresses (coefficients)
    stores: Counter  # global stores likewise
    fall_throughs: int  # conditional branches inside the loop assumed not taken (no call in what they skip)
    inner_branches: int  # backward branches on the path besides the loop's own (inner loops, counted once)


CALL_OUT = 16  # instructions: the longest stretch a branch around a call-out skips (ptxas emits 2-6)


def _call_out(skipped: list[Instruction]) -> bool:
    return len(skipped) <= CALL_OUT and any(instruction.base == "CALL" for instruction in skipped)


def common_path(body: list[Instruction]) -> tuple[list[Instruction], int]:
    """(the instructions one iteration of `body` issues in the common case, how many branches inside
    the loop were assumed not taken with no call to tell). Walks from the loop head to its backward
    branch: an unconditional forward branch jumps; a conditional one jumps when the code it skips is
    a short call-out (at most CALL_OUT instructions, one of them a CALL), else falls through. ptxas
    calls out of line for the rare operands of IEEE division and reciprocal behind such a branch
    (`@!P0 BRA join; ...; CALL; ...; join:` or `@P0 BRA fast; ...; CALL; BRA join; fast:`), and the
    kernels call their rare paths (__noinline__ functions) the same way; a branch skipping a long
    stretch is the common path's own (e.g. to a rare path laid out after it), which is counted.
    Other conditional branches: the side ptxas lays out first is counted."""
    position = {instruction.address: i for i, instruction in enumerate(body)}
    last = body[-1].address
    path, fall_throughs, i = [], 0, 0
    while i < len(body):
        instruction = body[i]
        path.append(instruction)
        target = instruction.target
        if target is None or not instruction.address < target <= last or i == len(body) - 1:
            i += 1
        elif not instruction.conditional or _call_out(body[i + 1 : position[target]]):
            i = position[target]
        else:
            fall_throughs += 1
            i += 1
    return path, fall_throughs


def _loop_invariant(path: list[Instruction], index: int, register: str) -> bool:
    """Whether `register`, as path[index] reads it, holds the same value in every iteration: set
    before the loop, or in it from the constant bank (kernel parameters, LDC) through arithmetic.
    ptxas rematerializes coefficient pointers this way (LDC, then LDG from them) when registers are
    short, so a kernel can load coefficients inside its loop."""
    for j in range(index - 1, -1, -1):
        writer = path[j]
        if register in writer.written_registers:
            if writer.base == "LDC":
                return True
            if writer.base in ("LDG", "LD", "LDS", "LDL", "ATOM", "ATOMG", "SHFL", "S2R"):
                return False
            return all(_loop_invariant(path, j, source) for source in writer.read_registers)
    return not any(register in i.written_registers for i in path)  # else carried from the last iteration


def _loop(body: list[Instruction]) -> Loop:
    path, fall_throughs = common_path(body)
    global_loads = [(i, instruction) for i, instruction in enumerate(path) if instruction.base == "LDG"]
    streamed = [load for i, load in global_loads if not (load.address_register is None or _loop_invariant(path, i, load.address_register))]
    return Loop(
        first_address=body[0].address,
        last_address=body[-1].address,
        opcodes=Counter(i.opcode for i in path),
        off_path=len(body) - len(path),
        loads=Counter(load.global_access_bytes for load in streamed),
        invariant_loads=len(global_loads) - len(streamed),
        stores=Counter(i.global_access_bytes for i in path if i.base == "STG"),
        fall_throughs=fall_throughs,
        inner_branches=sum(i.target is not None and i.target <= i.address for i in path[:-1]),
    )


def loops(code: list[Instruction]) -> list[Loop]:
    """Every loop of a function, in address order: a backward branch and the range back to its target."""
    position = {instruction.address: i for i, instruction in enumerate(code)}
    ranges = sorted(
        (position[i.target], last)
        for last, i in enumerate(code)
        if i.target is not None and i.target <= i.address and i.target in position
    )
    return [_loop(code[first : last + 1]) for first, last in ranges]


def hot_loop(code: list[Instruction]) -> Loop:
    """The bulk grid-stride loop of a kernel: the first loop in address order that loads and stores
    global memory on its common path, of those with no such loop inside. The kernels write the bulk
    loop first, then the ones for the remainder packs and the scalar tail, and ptxas keeps that order
    (it may unroll the later ones, so a tail can hold more loads than the bulk loop); the backward
    kernels' reduction comes after them."""
    candidates = [loop for loop in loops(code) if loop.loads and loop.stores]
    innermost = [
        loop for loop in candidates
        if not any(other is not loop and loop.first_address <= other.first_address
                   and other.last_address <= loop.last_address for other in candidates)
    ]
    if not innermost:
        raise ValueError("no loop with global loads and stores on its path")
    return innermost[0]


# ---------------------------------------------------------------------------------------------------
# The roofline


def cost(opcodes: Counter, elements: float) -> tuple[dict[str, float], float, dict[str, float]]:
    """Per element on one SM: (instructions by class, clocks to issue them, clocks on each pipe)."""
    per_class = dict.fromkeys(CLASSES, 0.0)
    pipe_instructions = dict.fromkeys(PIPE_RATES, 0.0)
    for opcode, count in opcodes.items():
        kind, pipes = classify(opcode)
        per_class[kind] += count / elements
        for pipe in pipes:
            pipe_instructions[pipe] += count / elements
    issue_clocks = sum(per_class.values()) / ISSUE_RATE
    return per_class, issue_clocks, {pipe: n / PIPE_RATES[pipe] for pipe, n in pipe_instructions.items()}


@dataclass(frozen=True)
class Prediction:
    device: Device
    fraction: float  # of the copy bandwidth: min(1, memory time / compute time)
    headroom: float  # compute time / memory time: below 1 memory-bound, with 1 - headroom of compute to spare
    issue_budget: float  # instructions per element at which issuing alone would just meet the target


def predict(compute_clocks: float, bytes_per_element: float, device: Device, target: float) -> Prediction:
    """Roofline of one kernel on one device with every SM streaming; compute_clocks per element per SM."""
    sm_clocks_per_s = device.sms * device.clock_ghz * 1e9
    compute_s = compute_clocks / sm_clocks_per_s
    memory_s = bytes_per_element / device.copy_bytes_per_s
    issue_budget = memory_s / target * sm_clocks_per_s * ISSUE_RATE
    return Prediction(device, min(1.0, memory_s / compute_s), compute_s / memory_s, issue_budget)


@dataclass
class KernelResult:
    degrees: tuple[int, int]
    version: str
    build_command: str
    name: str  # e.g. rational_backward<rs::bf16_t, 8>
    kind: str  # forward | backward
    dtype: str  # torch's name: float32, float64, float16, bfloat16
    vec: int  # elements per 16-byte pack; 1 for the scalar kernels
    resources: Resources
    loop: Loop
    elements_per_iteration: float  # from the loop's loads
    bytes_per_element: int
    per_class: dict[str, float]  # instructions per element
    issue_clocks: float  # SM clocks per element to issue them
    pipe_clocks: dict[str, float]  # SM clocks per element on each pipe
    predictions: dict[str, Prediction]  # by device name
    notes: list[str]

    @property
    def instructions_per_element(self) -> float:
        return sum(self.per_class.values())

    @property
    def bound(self) -> str:
        """What limits compute: 'issue' or the busiest pipe."""
        pipe = max(self.pipe_clocks, key=self.pipe_clocks.get)
        return pipe if self.pipe_clocks[pipe] > self.issue_clocks else "issue"

    @property
    def wide(self) -> bool:
        return self.vec > 1

    @property
    def unknown_opcodes(self) -> list[str]:
        return sorted(op for op in self.loop.opcodes if classify(op)[0] == "other")


def _kernel_result(degrees, version, built: Build, name: str, resources: Resources, code: list[Instruction],
                   device_list) -> KernelResult:
    kind, storage, vec = re.search(r"rational_(forward|backward)<(.+?), (\d+)>", name).groups()
    element_bytes = STORAGE_DTYPES[storage].itemsize
    reads, writes = STREAMS[kind]
    loop = hot_loop(code)
    # elements per iteration: what the loads bring in, over the arrays read per element
    elements = sum(width * count for width, count in loop.loads.items()) / element_bytes / reads
    stored = sum(width * count for width, count in loop.stores.items()) / element_bytes / writes
    pack_bytes = int(vec) * element_bytes
    notes = []
    if stored != elements:
        notes.append(f"stores write {stored:g} elements per iteration, loads read {elements:g}")
    for what, accesses in (("loads", loop.loads), ("stores", loop.stores)):
        if set(accesses) != {pack_bytes}:
            widths = ", ".join(f"{count} x {width} B" for width, count in sorted(accesses.items(), reverse=True))
            notes.append(f"{what} per iteration: {widths}, not {pack_bytes}-byte packs")
    if loop.invariant_loads:
        notes.append(f"{loop.invariant_loads} loads per iteration from loop-invariant addresses (coefficients reloaded)")
    if loop.fall_throughs:
        notes.append(f"{loop.fall_throughs} branch(es) inside the loop counted as not taken")
    if loop.inner_branches:
        notes.append(f"{loop.inner_branches} inner loop(s) counted as one pass")
    per_class, issue_clocks, pipe_clocks = cost(loop.opcodes, elements)
    bytes_per_element = (reads + writes) * element_bytes
    compute_clocks = max(issue_clocks, *pipe_clocks.values())
    predictions = {d.name: predict(compute_clocks, bytes_per_element, d, TARGETS[kind]) for d in device_list}
    short_name = name.split("(")[0].removeprefix("void ").strip()
    dtype = str(STORAGE_DTYPES[storage]).removeprefix("torch.")
    return KernelResult(tuple(degrees), version, built.command, short_name, kind, dtype, int(vec), resources, loop,
                        elements, bytes_per_element, per_class, issue_clocks, pipe_clocks, predictions, notes)


def analyze(degrees, version: str, arch: str = "sm_90", *, defines: dict | None = None,
            device_list: tuple[Device, ...] | None = None) -> list[KernelResult]:
    """One result per kernel instance of one (degrees, version) build: forward first, dtypes in the
    launcher's order, wide before scalar. `defines` replaces -D macros, e.g. {"RS_LOADS": 1}."""
    built = build(kernel_options(degrees, version, defines), arch)
    resources = parse_ptxas(built.ptxas_log)
    functions = parse_sass(built.sass)
    names = demangle(list(functions))
    results = [
        _kernel_result(degrees, version, built, names[mangled], resources[mangled], code, device_list or devices())
        for mangled, code in functions.items()
        if mangled in resources  # entry functions (not the out-of-line slow-path subroutines)
    ]
    dtype_order = [str(dtype).removeprefix("torch.") for dtype in STORAGE_DTYPES.values()]
    return sorted(results, key=lambda r: (r.kind != "forward", dtype_order.index(r.dtype), -r.vec))


def wide_fractions(degrees, version: str, arch: str = "sm_90", **kwargs) -> dict[tuple[str, str], dict[str, float]]:
    """{(kind, dtype): {device: predicted fraction of copy bandwidth}} of the wide kernels, for a test
    against TARGETS."""
    return {
        (r.kind, r.dtype): {device: p.fraction for device, p in r.predictions.items()}
        for r in analyze(degrees, version, arch, **kwargs)
        if r.wide
    }


# ---------------------------------------------------------------------------------------------------
# The report


def _table(results: list[KernelResult]) -> list[str]:
    device_names = list(results[0].predictions)
    head = ["kind", "dtype", "VEC", "regs", "spill st/ld B", "elem/iter", "instr/elem", *CLASSES, "B/elem",
            "instr/B", "bound", *(f"{d} %" for d in device_names), *(f"{d} compute/mem" for d in device_names)]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in results:
        row = [r.kind, r.dtype, str(r.vec), str(r.resources.registers),
               f"{r.resources.spill_store_bytes}/{r.resources.spill_load_bytes}", f"{r.elements_per_iteration:g}",
               f"{r.instructions_per_element:.1f}", *(f"{r.per_class[c]:.2f}" for c in CLASSES),
               str(r.bytes_per_element), f"{r.instructions_per_element / r.bytes_per_element:.1f}", r.bound,
               *(f"{100 * r.predictions[d].fraction:.0f}" for d in device_names),
               *(f"{r.predictions[d].headroom:.2f}" for d in device_names)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _verdict(r: KernelResult) -> str:
    target = TARGETS[r.kind]
    worst = min(r.predictions.values(), key=lambda p: p.fraction)
    fractions = ", ".join(f"{name} {100 * p.fraction:.0f} %" for name, p in r.predictions.items())
    if worst.fraction >= target:
        return f"- {r.kind} {r.dtype} x{r.vec}: {fractions}: meets {100 * target:.0f} %"
    return (f"- {r.kind} {r.dtype} x{r.vec}: {fractions}: BELOW {100 * target:.0f} % ({r.bound}-bound at"
            f" {r.instructions_per_element:.1f} instructions/element; {100 * target:.0f} % on {worst.device.name}"
            f" allows <= {worst.issue_budget:.1f})")


def report(results: list[KernelResult], command: str) -> str:
    """Markdown: header (command, tools, date, assumptions), one table per config, verdicts."""
    device_list = [p.device for p in results[0].predictions.values()]
    pipes = ", ".join(f"{pipe} {rate}" for pipe, rate in PIPE_RATES.items())
    lines = [
        "# Static performance model of the rational CUDA kernels",
        "",
        f"- command: `{command}`",
        f"- nvcc: {tool_version('nvcc')}; cuobjdump: {tool_version('cuobjdump')}",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        "- model: per element and SM, compute clocks = max(instructions of the bulk loop / 128 issued per clock,"
        f" busiest pipe's instructions / its rate: {pipes} per clock; IMAD takes fma and fmaheavy, F2FP pack"
        " is alu, HADD2.F32 is fma, memory/control/uniform are issue only); memory time = bytes"
        " (forward 2, backward 3 x sizeof(T)) / copy bandwidth; predicted % = min(1, memory / compute time)",
        "- devices: " + "; ".join(
            f"{d.name}: {d.sms} SMs at {d.clock_ghz} GHz, copy {d.copy_bytes_per_s / 1e12:.2f} TB/s"
            f" = {100 * d.copy_efficiency:.0f} % of {d.hbm_bytes_per_s / 1e12:.2f} TB/s HBM" for d in device_list),
        "- a loop iteration is its common path: code a branch skips around a call (IEEE division slow paths,"
        " out-of-line rare paths) is left out; other branches inside the loop count their first side",
        "- not modelled: latency, caches, occupancy, load/store-unit throughput (narrow loads cost issue only),"
        " tails, backward's per-block gradient reduction: an upper bound for the code as compiled",
        f"- targets: forward >= {100 * TARGETS['forward']:.0f} %, backward >= {100 * TARGETS['backward']:.0f} %"
        " of copy bandwidth for the wide kernels (VEC > 1); scalar kernels are shown, not judged",
    ]
    configs = list(dict.fromkeys((r.degrees, r.version) for r in results))
    for degrees, version in configs:
        rows = [r for r in results if (r.degrees, r.version) == (degrees, version)]
        slow = ", ".join(f"{r.kind} {r.dtype} x{r.vec} {r.loop.off_path}" for r in rows)
        lines += ["", f"## degrees ({degrees[0]}, {degrees[1]}), version {version}", "",
                  f"`{rows[0].build_command}`", "", *_table(rows), "",
                  f"Instructions in the loop's range off its common path (slow-path calls), not counted: {slow}."]
        lines += [f"- {r.name}: {note}" for r in rows for note in r.notes]
        lines += [f"- {r.name}: opcodes not in the table, counted as other: {', '.join(r.unknown_opcodes)}"
                  for r in rows if r.unknown_opcodes]
    lines += ["", "## Verdict (wide kernels)"]
    for degrees, version in configs:
        lines += ["", f"degrees ({degrees[0]}, {degrees[1]}), version {version}:"]
        lines += [_verdict(r) for r in results if (r.degrees, r.version) == (degrees, version) and r.wide]
    return "\n".join(lines) + "\n"


def _config(text: str) -> tuple[tuple[int, int], str]:
    m, n, version = text.split(",")
    return (int(m), int(n)), version.strip().upper()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", type=_config, metavar="M,N,V",
                        help="degrees and version, e.g. 5,4,A (repeatable; default: " +
                        " ".join(f"{m},{n},{v}" for (m, n), v in DEFAULT_CONFIGS) + ")")
    parser.add_argument("--arch", default="sm_90", help="compile target (the machine model stays sm_90's)")
    parser.add_argument("--clock-ghz", type=float, default=CLOCK_GHZ, help="sustained SM clock")
    parser.add_argument("--copy-efficiency", type=float, default=COPY_EFFICIENCY,
                        help="device-to-device copy rate as a fraction of the HBM spec")
    parser.add_argument("--output", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    missing = missing_tools()
    if missing:
        sys.exit(f"not found: {', '.join(missing)} (PATH or the nvidia-* pip wheels' bin folders)")
    device_list = devices(args.clock_ghz, args.copy_efficiency)
    results = [r for degrees, version in args.config or DEFAULT_CONFIGS
               for r in analyze(degrees, version, args.arch, device_list=device_list)]
    for r in results:
        if r.unknown_opcodes:
            print(f"{r.name}: opcodes not in OPCODES, counted as other: {', '.join(r.unknown_opcodes)}", file=sys.stderr)
    text = report(results, " ".join(["python", "benchmarks/kernel_static.py", *(argv if argv is not None else sys.argv[1:])]))
    print(text, end="")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)


if __name__ == "__main__":
    main()
