"""Device fingerprints: the CPU and Jetson/TensorRT probes parsed from real tool output, stable
ids that change with whatever selects the kernels, matching (an incomplete fingerprint never
matches), and the fingerprint recorded on every measurement of a campaign table. (results.csv
and summary.json of a search: tests/test_pipeline.py, on its small run.)"""

from __future__ import annotations

import json
import re

import pytest

from autocomp.measure import fingerprint as fpm
from autocomp.measure.fingerprint import (
    caches,
    cpu_flags,
    cpu_id,
    cpu_model,
    differences,
    fingerprint_id,
    has_int8_dot,
    matches,
    parse_cuda_version,
    parse_jetson_clocks,
    parse_l4t,
    parse_nvpmodel,
    parse_trt_version,
    similarity,
    vector_width,
)

# /proc/cpuinfo of an AVX2 server (Zen 2) and of an AVX-512 + VNNI + AMX one (Sapphire Rapids): one
# processor entry each, as the kernel prints them ("vmx flags" and "bugs" lines included)
CPUINFO_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 49
model name\t: AMD EPYC 7B12 64-Core Processor
stepping\t: 0
cpu MHz\t\t: 2249.998
cache size\t: 512 KB
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext ssbd ibrs ibpb stibp vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 clzero xsaveerptr arat npt nrip_save umip rdpid
bugs\t\t: sysret_ss_attrs null_seg spectre_v1 spectre_v2 spec_store_bypass retbleed smt_rsb
bogomips\t: 4499.99
"""

AVX2_HOST = "amd-epyc-avx2-onnxruntime1.32.0-t1b1-31c78365"  # the shipped cpu-ort predictor of the first host
CPUINFO_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
stepping\t: 8
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc arch_perfmon pebs bts rep_good nopl xtopology nonstop_tsc cpuid aperfmperf tsc_known_freq pni pclmulqdq dtes64 monitor ds_cpl vmx smx est tm2 ssse3 sdbg fma cx16 xtpr pdcm pcid dca sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand lahf_lm abm 3dnowprefetch cpuid_fault epb cat_l3 cat_l2 cdp_l3 invpcid_single intel_ppin cdp_l2 ssbd mba ibrs ibpb stibp ibrs_enhanced tpr_shadow flexpriority ept vpid ept_ad fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid cqm rdt_a avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb intel_pt avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves cqm_llc cqm_occup_llc cqm_mbm_total cqm_mbm_local split_lock_detect avx_vnni avx512_bf16 wbnoinvd dtherm ida arat pln pts hfi vnmi avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg tme avx512_vpopcntdq la57 rdpid bus_lock_detect cldemote movdiri movdir64b enqcmd fsrm md_clear serialize tsxldtrk pconfig arch_lbr ibt amx_bf16 avx512_fp16 amx_tile amx_int8 flush_l1d arch_capabilities
vmx flags\t: vnmi preemption_timer posted_intr invvpid ept_x_only ept_ad ept_1gb flexpriority apicv tsc_offset vtpr mtf vapic ept vpid unrestricted_guest vapic_reg vid ple shadow_vmcs pml ept_mode_based_exec tsc_scaling usr_wait_pause
bugs\t\t: spectre_v1 spectre_v2 spec_store_bypass swapgs eibrs_pbrsb
"""

# a Jetson Orin (ARMv8.2: the dot-product extension, no "model name" on older kernels)
CPUINFO_ORIN = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd42
CPU revision\t: 1
"""

NV_TEGRA_RELEASE = """# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024
# KERNEL_VARIANT: oot
TARGET_USERSPACE_LIB_DIR=nvidia
TARGET_USERSPACE_LIB_DIR_PATH=usr/lib/aarch64-linux-gnu/nvidia
"""

NVPMODEL_Q = "NV Power Mode: MAXN\n0\n"

# `jetson_clocks --show` after `sudo jetson_clocks` on an Orin NX: CPUs and GPU pinned (Min = Max =
# Current); EMC and the DLA/PVA engines are pinned by an override, their MinFreq stays low
CLOCKS_LOCKED = """SOC family:tegra234  Machine:NVIDIA Jetson Orin NX Engineering Reference Developer Kit
Online CPUs: 0-7
cpu0: Online=1 Governor=schedutil MinFreq=1728000 MaxFreq=1728000 CurrentFreq=1728000 IdleStates: WFI=0 c7=0
cpu1: Online=1 Governor=schedutil MinFreq=1728000 MaxFreq=1728000 CurrentFreq=1728000 IdleStates: WFI=0 c7=0
cpu2: Online=1 Governor=schedutil MinFreq=1728000 MaxFreq=1728000 CurrentFreq=1728000 IdleStates: WFI=0 c7=0
cpu3: Online=1 Governor=schedutil MinFreq=1728000 MaxFreq=1728000 CurrentFreq=1728000 IdleStates: WFI=0 c7=0
cpu4: Online=1 Governor=schedutil MinFreq=1728000 MaxFreq=1728000 CurrentFreq=1728000 IdleStates: WFI=0 c7=0
cpu5: Online=1 Governor=schedutil MinFreq=1728000 MaxFreq=1728000 CurrentFreq=1728000 IdleStates: WFI=0 c7=0
cpu6: Online=1 Governor=schedutil MinFreq=1728000 MaxFreq=1728000 CurrentFreq=1728000 IdleStates: WFI=0 c7=0
cpu7: Online=1 Governor=schedutil MinFreq=1728000 MaxFreq=1728000 CurrentFreq=1728000 IdleStates: WFI=0 c7=0
GPU MinFreq=918000000 MaxFreq=918000000 CurrentFreq=918000000
EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=1
DLA0_CORE:   Online=1 MinFreq=0 MaxFreq=614400000 CurrentFreq=614400000
PVA0_AXI:    Online=1 MinFreq=0 MaxFreq=486400000 CurrentFreq=486400000
FAN Dynamic Speed control=active hwmon4_pwm1=73
NV Power Mode: MAXN
"""

TRTEXEC_BANNER = "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help\n=== Model Options ===\n"
NVCC = """nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2024 NVIDIA Corporation
Built on Wed_Aug_14_10:26:51_PDT_2024
Cuda compilation tools, release 12.6, V12.6.68
Build cuda_12.6.r12.6/compiler.34714021_0
"""


# --------------------------------------------------------------------------- Jetson / TensorRT text


def test_jetson_and_tensorrt_parsers_on_real_output():
    assert parse_l4t(NV_TEGRA_RELEASE) == "36.4.0"
    assert parse_l4t("# R35 (release), REVISION: 5.0, GCID: 35550185, BOARD: t186ref, EABI: aarch64, DATE: Tue Feb 20 04:46:31 UTC 2024") == "35.5.0"
    assert parse_l4t("") is None and parse_l4t("cat: /etc/nv_tegra_release: No such file or directory") is None

    assert parse_nvpmodel(NVPMODEL_Q) == "MAXN (0)"
    assert parse_nvpmodel("NVPM WARN: fan mode is not set!\nNV Power Mode: 15W\n2\n") == "15W (2)"
    assert parse_nvpmodel("NV Power Mode: MAXN_SUPER") == "MAXN_SUPER"
    assert parse_nvpmodel("") is None

    assert parse_jetson_clocks(CLOCKS_LOCKED) is True  # EMC/DLA/PVA overrides do not count as unlocked
    cpu_scaling = CLOCKS_LOCKED.replace("cpu3: Online=1 Governor=schedutil MinFreq=1728000 MaxFreq=1728000 CurrentFreq=1728000",
                                        "cpu3: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=1728000 CurrentFreq=1190400")
    assert parse_jetson_clocks(cpu_scaling) is False
    gpu_idle = CLOCKS_LOCKED.replace("GPU MinFreq=918000000 MaxFreq=918000000 CurrentFreq=918000000",
                                     "GPU MinFreq=306000000 MaxFreq=918000000 CurrentFreq=306000000")
    assert parse_jetson_clocks(gpu_idle) is False
    assert parse_jetson_clocks("") is None and parse_jetson_clocks("sudo: a password is required") is None

    assert parse_trt_version(TRTEXEC_BANNER) == "10.3.0"
    assert parse_trt_version("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec") == "8.6.1"
    assert parse_trt_version("[TensorRT v100800]") == "10.8.0"
    assert parse_trt_version("TensorRT version: 10.3.0") == "10.3.0"
    assert parse_trt_version("trtexec: command not found") is None
    assert parse_cuda_version(NVCC) == "12.6"
    assert parse_cuda_version("| NVIDIA-SMI 560.35.03    Driver Version: 560.35.03    CUDA Version: 12.6     |") == "12.6"


def test_a_jetson_fingerprint_from_its_probe_script_output():
    """The probe script's output (one marker per probe) -> a TensorRT fingerprint; each of module,
    JetPack, TensorRT, power mode and clock locking makes it another device."""
    from autocomp.measure.trtexec import _PROBES, fingerprint_from_probes, parse_probes

    parts = {"model": "NVIDIA Jetson Orin NX Engineering Reference Developer Kit\n", "l4t": NV_TEGRA_RELEASE, "gpu": "",
             "smi": "", "nvcc": NVCC, "trt": TRTEXEC_BANNER, "nvpmodel": NVPMODEL_Q, "clocks": CLOCKS_LOCKED}
    assert set(parts) == set(_PROBES)  # every probe the script runs is exercised

    def text(**change) -> str:
        return "".join(f"@@autocomp-probe {k}\n{change.get(k, v)}" for k, v in parts.items())

    probes = parse_probes(text())
    assert probes["nvpmodel"].strip() == "NV Power Mode: MAXN\n0" and probes["gpu"] == ""
    fp = fingerprint_from_probes(probes, "trtexec", batch=1)
    assert fp["jetson_module"] == fp["gpu"] == "NVIDIA Jetson Orin NX Engineering Reference Developer Kit"
    assert (fp["l4t"], fp["backend_version"], fp["cuda"], fp["power_mode"], fp["clocks_locked"]) == ("36.4.0", "10.3.0", "12.6", "MAXN (0)", True)
    fid = fingerprint_id(fp)
    assert fid.startswith("nvidia-jetson-orin-nx")
    assert fingerprint_id(fingerprint_from_probes(parse_probes(text()), "trtexec")) == fid  # stable
    others = [fingerprint_from_probes(parse_probes(text(**change)), "trtexec") for change in (
        {"nvpmodel": "NV Power Mode: 15W\n1\n"},
        {"clocks": CLOCKS_LOCKED.replace("CurrentFreq=918000000", "CurrentFreq=306000000").replace("MinFreq=918000000", "MinFreq=306000000")},
        {"trt": TRTEXEC_BANNER.replace("v100300", "v100800")},
        {"l4t": NV_TEGRA_RELEASE.replace("REVISION: 4.0", "REVISION: 3.0")},
        {"model": "NVIDIA Jetson AGX Orin Developer Kit\n"},
    )]
    ids = {fingerprint_id(o) for o in others}
    assert len(ids) == len(others) and fid not in ids
    for o in others:
        assert not matches(o, fp) and len(differences(o, fp)) >= 1
    assert matches(fingerprint_from_probes(parse_probes(text()), "trtexec"), fp)
    assert fingerprint_id(fingerprint_from_probes(probes, "trtexec", batch=8)) != fid


# --------------------------------------------------------------------------- the CPU


def _cpu_fp(cpuinfo: str, **change) -> dict:
    isa = cpu_flags(cpuinfo)
    return {"schema": fpm.SCHEMA, "backend": "onnxruntime", "cpu_model": cpu_model(cpuinfo), "arch": "x86_64", "isa": isa,
            "backend_version": "1.32.0", "threads": 1, "batch": 1, "qdq_fusion": has_int8_dot(isa), **change}


def test_cpu_flags_give_the_isa_class():
    avx2, amx, orin = cpu_flags(CPUINFO_AVX2), cpu_flags(CPUINFO_AMX), cpu_flags(CPUINFO_ORIN)
    assert cpu_model(CPUINFO_AVX2) == "AMD EPYC 7B12 64-Core Processor" and cpu_model(CPUINFO_AMX) == "Intel(R) Xeon(R) Platinum 8480+"
    assert avx2 == sorted(avx2) and {"avx2", "fma", "f16c"} <= set(avx2)
    assert not {f for f in avx2 if f.startswith(("avx512", "amx")) or "vnni" in f}  # "vmx flags"/"bugs" lines ignored
    assert {"avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "avx512_bf16", "avx512_fp16"} <= set(amx)
    assert "preemption_timer" not in amx and "vnmi" not in amx  # the "vmx flags" line is not the ISA
    assert (vector_width(avx2), has_int8_dot(avx2)) == (256, False)
    assert (vector_width(amx), has_int8_dot(amx)) == (512, True)
    assert {"asimd", "asimddp", "fphp"} <= set(orin) and (vector_width(orin), has_int8_dot(orin)) == (128, True)
    assert cpu_flags("processor\t: 0\n") == [] and vector_width(None) == 128 and not has_int8_dot(None)
    # the NCHWc block of ORT's float kernels follows the vector width: 8 floats with AVX2, 16 with AVX-512
    from autocomp.predictor.features import nchwc_block

    assert nchwc_block(_cpu_fp(CPUINFO_AVX2)) == 8 and nchwc_block(_cpu_fp(CPUINFO_AMX)) == 16
    # the id names the class
    assert "-avx2-" in fingerprint_id(_cpu_fp(CPUINFO_AVX2)) and "-avx512-vnni-amx-" in fingerprint_id(_cpu_fp(CPUINFO_AMX))


def test_the_host_behind_a_generic_model_name(tmp_path):
    """A cloud VM calls a Zen 4 and a Zen 5 "AMD EPYC" alike: CPUID family.model.stepping (ARM:
    implementer.part.variant) and the cache sizes tell them apart. They are in the id (and its slug)
    when known; a fingerprint from before they were recorded keeps its id and matches no fingerprint
    that has them."""
    assert cpu_id(CPUINFO_AVX2) == "23.49.0" and cpu_id(CPUINFO_AMX) == "6.143.8"
    assert cpu_id(CPUINFO_ORIN) == "0x41.0xd42.0x3" and cpu_id("processor\t: 0\n") is None
    # only the first processor's block is read
    assert cpu_id(CPUINFO_AVX2 + "\n" + CPUINFO_AMX) == "23.49.0"
    for index, (level, kind, size) in enumerate([(1, "Data", "32K"), (1, "Instruction", "32K"),
                                                 (2, "Unified", "1024K"), (3, "Unified", "32768K")]):
        d = tmp_path / f"index{index}"
        d.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (d / name).write_text(f"{value}\n")
    assert caches(tmp_path) == "L1d 32K, L2 1024K, L3 32768K" and caches(tmp_path / "none") is None
    zen4 = _cpu_fp(CPUINFO_AVX2, cpu_model="AMD EPYC", cpu_id="25.17.1", caches="L1d 32K, L2 1024K, L3 32768K")
    zen5 = {**zen4, "cpu_id": "26.2.0", "caches": "L1d 48K, L2 1024K, L3 32768K"}
    assert fingerprint_id(zen4) != fingerprint_id(zen5) and "-25.17.1-" in fingerprint_id(zen4)
    assert [d.split(":")[0] for d in differences(zen5, zen4)] == ["cpu_id", "caches"]
    legacy = {k: v for k, v in zen4.items() if k not in fpm.HOST_KEYS}
    assert fingerprint_id(legacy) == fingerprint_id({**_cpu_fp(CPUINFO_AVX2), "cpu_model": "AMD EPYC"})
    assert not matches(zen4, legacy) and not matches(legacy, zen4) and matches(legacy, dict(legacy))
    assert "cpu_id: 25.17.1 vs unknown" in differences(zen4, legacy)


def test_fingerprint_ids_are_stable_and_follow_the_kernel_selecting_fields():
    base = _cpu_fp(CPUINFO_AVX2)
    fid = fingerprint_id(base)
    assert re.fullmatch(r"[a-z0-9.-]+-[0-9a-f]{8}", fid) and len(fid) <= 69  # a safe folder name
    assert fingerprint_id(dict(reversed(list(base.items())))) == fid  # key order
    assert fingerprint_id(json.loads(fpm.dumps(base))) == fid  # a JSON round trip (tables store it so)
    assert fingerprint_id({**base, "host": "another-node"}) == fid  # not a kernel-selecting field
    changed = {
        "isa": _cpu_fp(CPUINFO_AMX)["isa"], "threads": 2, "batch": 8, "backend_version": "1.20.1",
        "cpu_model": "AMD EPYC 9654 96-Core Processor", "qdq_fusion": True,
    }
    base = {**base, "cpu_id": "23.49.0", "caches": "L1d 32K, L2 512K, L3 16384K"}
    fid = fingerprint_id(base)
    changed.update(cpu_id="23.49.1", caches="L1d 32K, L2 512K, L3 32768K")
    ids = {k: fingerprint_id({**base, k: v}) for k, v in changed.items()}
    assert fid not in ids.values() and len(set(ids.values())) == len(ids)
    for k, v in changed.items():
        assert not matches({**base, k: v}, base)
        assert [d.split(":")[0] for d in differences({**base, k: v}, base)] == [k]
    assert matches(dict(base), base) and differences(base, base) == []
    # same ISA class on another CPU model is closer (a better calibration source) than another class
    assert similarity(base, {**base, "cpu_model": "AMD EPYC 7763"}) > similarity(base, _cpu_fp(CPUINFO_AMX))
    assert similarity(base, {**base, "backend": "openvino"}) == 0.0


def test_a_fingerprint_without_isa_never_matches():
    """A table written before fingerprints (or a probe that could not read the ISA) cannot be shown
    to match anything, itself included."""
    base = _cpu_fp(CPUINFO_AVX2)
    old = {k: v for k, v in base.items() if k != "isa"}
    assert not matches(old, base) and not matches(base, old) and not matches(old, dict(old))
    assert any(d.startswith("isa:") for d in differences(old, base))
    assert "isa-unknown" in fingerprint_id(old) and fingerprint_id(old) != fingerprint_id(base)


def test_this_host_fingerprint_and_the_int8_fusion_choice():
    import onnxruntime as ort

    from autocomp.measure import get_device
    from autocomp.measure.onnxruntime import QDQ_FUSION, disabled_optimizers, qdq_fusion

    fp = get_device("cpu-ort").fingerprint()
    assert fp == fpm.cpu("onnxruntime", ort.__version__, 1, 1, qdq_fusion=qdq_fusion())
    assert fp["isa"] == cpu_flags() and fp["cpu_model"] == cpu_model() and fp["backend_version"] == ort.__version__
    assert fp.get("cpu_id") == cpu_id() and fp.get("caches") == caches()
    assert all(fp.get(k) is not None for k in fpm.KEYS["onnxruntime"])
    # ORT's QDQ fusion is kept only where the int8 kernels accumulate without int16 saturation
    assert qdq_fusion() == has_int8_dot(cpu_flags()) == fp["qdq_fusion"]
    assert disabled_optimizers() == ([] if qdq_fusion() else [QDQ_FUSION])
    # the devices' own options are part of their fingerprint
    assert get_device("cpu-ort-b8").fingerprint()["batch"] == 8 and get_device("cpu-ort-2t").fingerprint()["threads"] == 2
    assert fingerprint_id(get_device("cpu-ort-b8").fingerprint()) != fingerprint_id(fp)


# --------------------------------------------------------------------------- measurements and tables



def test_the_campaign_table_records_the_fingerprint(tmp_path, tiny_yaml):
    """Every measurement carries the fingerprint that measured it; a table holds one fingerprint
    (another thread count is another table), and a table mixing two is refused."""
    import pandas as pd

    from autocomp.errors import UserError
    from autocomp.measure.base import Device
    from autocomp.predictor.campaign import read_table, run_campaign, table_path, tables
    from autocomp.predictor.model import host_info
    from autocomp.space import get_space

    (tmp_path / "tiny.yaml").write_text(tiny_yaml("tiny-fingerprint"))
    space = get_space(tmp_path / "tiny.yaml")
    dev = Device("cpu-ort-fp-test", "onnxruntime", ("fp32", "int8"), {"threads": 1, "warmup": 2, "repeats": 20, "min_time_s": 0.05})
    fp = dev.fingerprint()
    fid = fingerprint_id(fp)
    run_campaign(space, dev, 2, tmp_path, seed=0, progress=False, use_ray=False)
    path = table_path(dev.name, fid, tmp_path)
    assert path == tmp_path / dev.name / fid / "measurements.parquet" and tables(dev.name, tmp_path) == [path]
    table = read_table(path)
    assert len(table) == 2 and set(table["fingerprint_id"]) == {fid}
    assert all(json.loads(s) == fp for s in table["fingerprint"])
    assert set(table["cpu_model"]) == {fp["cpu_model"]} and set(table["backend_version"]) == {fp["backend_version"]}
    assert host_info(table)["fingerprint"] == fp and host_info(table)["fingerprint_id"] == fid

    run_campaign(space, dev, 1, tmp_path, seed=0, progress=False, use_ray=False, overrides={"threads": 2})
    fp2 = dev.fingerprint(threads=2)
    fid2 = fingerprint_id(fp2)
    assert fid2 != fid and tables(dev.name, tmp_path) == sorted([path, table_path(dev.name, fid2, tmp_path)])
    t2 = read_table(table_path(dev.name, fid2, tmp_path))
    assert len(t2) == 1 and int(t2["threads"].iloc[0]) == 2 and json.loads(t2["fingerprint"].iloc[0]) == fp2
    assert t2["id"].iloc[0] == table["id"].iloc[0]  # the same candidate, measured again on the other fingerprint
    assert len(read_table(path)) == 2  # the first table untouched
    with pytest.raises(UserError, match="fingerprints"):
        host_info(pd.concat([table, t2], ignore_index=True))


def test_devices_command_says_whether_this_machine_matches(tmp_path, monkeypatch):
    """`autocomp devices` lists each device's predictor fingerprints and whether one is this
    machine's: a calibration in the user's cache makes cpu-ort match."""
    from typer.testing import CliRunner

    from autocomp.cli import app
    from autocomp.measure import get_device
    from autocomp.predictor import load_predictor, predictor_dir
    from autocomp.resources import predictors_dir

    shipped = load_predictor("cpu-ort", AVX2_HOST)
    if shipped is None:
        pytest.skip("no shipped cpu-ort predictor")
    monkeypatch.setenv("AUTOCOMP_CACHE", str(tmp_path / "cache"))
    here = get_device("cpu-ort").fingerprint()
    fid = fingerprint_id(here)

    def row(output: str) -> str:  # the cpu-ort row, with the continuation lines of its multi-line cells
        lines = output.splitlines()
        i = next(k for k, line in enumerate(lines) if line.startswith("│ cpu-ort "))
        end = next((k for k in range(i + 1, len(lines)) if not lines[k].startswith("│ ") or lines[k][2:].split("│")[0].strip()),
                   len(lines))
        return "\n".join(lines[i:end])

    runner = CliRunner()
    before = runner.invoke(app, ["devices"], env={"COLUMNS": "400"})
    assert before.exit_code == 0, before.output
    assert shipped.fingerprint_id in row(before.output) and fid in row(before.output)
    shipped_here = (predictors_dir() / "cpu-ort" / fid / "predictor.json").exists()
    assert ("yes" in row(before.output)) == shipped_here
    if not shipped_here:
        assert "calibrates first" in row(before.output)
    calibrated = type(shipped)(shipped.kind, shipped.space, {**shipped.meta, "fingerprint": here, "fingerprint_id": fid},
                               shipped.coef, shipped.booster, {"a": 0.0, "b": 1.0})
    calibrated.save(predictor_dir("cpu-ort", fid, tmp_path / "cache" / "predictors"))
    after = runner.invoke(app, ["devices"], env={"COLUMNS": "400"})
    assert after.exit_code == 0, after.output
    assert f"{fid} (calibrated)" in row(after.output) and "yes" in row(after.output)
