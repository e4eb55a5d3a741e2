"""glam.plan's HLO reader, collective accounting, cost count and hardware profiles on hand-written input."""

import pytest

from glam.errors import GLaMError
from glam.plan import comms, cost, hlo
from glam.plan.estimate import estimate
from glam.plan.hardware import builtin_names, from_dict, load

# A step as XLA prints it after optimisation: a loop of 3 iterations (the layer scan) whose body holds
# an all-to-all and a fusion with a dot, inside a loop of 2 (gradient accumulation); a weight all-gather
# and a gradient all-reduce at the top level. Replica groups in each of XLA's three printed forms.
SNIPPET = """\
HloModule jit_step, num_partitions=8

%fused_dot (p0: f32[16,32], p1: f32[32,8]) -> f32[16,8] {
  %p0 = f32[16,32]{1,0} parameter(0)
  %p1 = f32[32,8]{1,0} parameter(1)
  ROOT %dot.1 = f32[16,8]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%layer_cond (arg: (s32[], f32[16,32])) -> pred[] {
  %arg = (s32[], f32[16,32]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %limit = s32[] constant(3)
  ROOT %lt = pred[] compare(%i, %limit), direction=LT
}

%layer_body (arg.1: (s32[], f32[16,32])) -> (s32[], f32[16,32]) {
  %arg.1 = (s32[], f32[16,32]{1,0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%arg.1), index=0
  %x = f32[16,32]{1,0} get-tuple-element(%arg.1), index=1
  %a2a = (f32[2,8,32]{2,1,0}, f32[2,8,32]{2,1,0}) all-to-all(%x, %x), channel_id=1, \
replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}
  %w = f32[32,8]{1,0} constant({...})
  %f = f32[16,8]{1,0} fusion(%x, %w), kind=kOutput, calls=%fused_dot
  ROOT %t = (s32[], f32[16,32]{1,0}) tuple(%i.1, %x)
}

%accum_cond (arg.2: (s32[], f32[16,32])) -> pred[] {
  %arg.2 = (s32[], f32[16,32]{1,0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

%accum_body (arg.3: (s32[], f32[16,32])) -> (s32[], f32[16,32]) {
  %arg.3 = (s32[], f32[16,32]{1,0}) parameter(0)
  ROOT %inner = (s32[], f32[16,32]{1,0}) while(%arg.3), condition=%layer_cond, body=%layer_body
}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

ENTRY %main (param: f32[16,32], w.1: f32[8,64]) -> f32[32,64] {
  %param = f32[16,32]{1,0} parameter(0)
  %w.1 = f32[8,64]{1,0} parameter(1)
  %init = (s32[], f32[16,32]{1,0}) tuple(%param, %param)
  %outer = (s32[], f32[16,32]{1,0}) while(%init), condition=%accum_cond, body=%accum_body, \
backend_config={"known_trip_count":{"n":"2"}}
  %ag = f32[32,64]{1,0} all-gather(%w.1), channel_id=2, replica_groups=[2,4]<=[8], dimensions={0}
  %ar = f32[32,64]{1,0} all-reduce(%ag), channel_id=3, replica_groups={{0,1},{2,3},{4,5},{6,7}}, to_apply=%add
  ROOT %cp = f32[32,64]{1,0} collective-permute(%ar), channel_id=4, source_target_pairs={{0,1},{1,0}}
}
"""


def test_instruction_fields_and_shape_bytes():
    ins = hlo.parse_instruction(
        "  %a2a = (f32[2,8,32]{2,1,0}, bf16[4]{0}) all-to-all(%x, f32[16,32]{1,0} %y), channel_id=1, "
        "replica_groups={{0,1}}"
    )
    assert (ins.name, ins.opcode, ins.operands) == ("a2a", "all-to-all", ("x", "y"))
    assert ins.operand_shapes == (None, "f32[16,32]{1,0}")
    assert ins.attrs.startswith("channel_id=1")
    assert hlo.shape_bytes(ins.shape) == 2 * 8 * 32 * 4 + 4 * 2
    assert hlo.shape_bytes("(s32[], pred[3], token[])") == 4 + 3
    assert hlo.parse_instruction("HloModule m") is None
    long = hlo.parse_instruction(
        "  %t = (f32[2]{0}, /*index=1*/f32[3]{0}) all-reduce(%a, /*index=1*/%b), to_apply=%add"
    )
    assert long.operands == ("a", "b") and long.operand_shapes == (None, None) and hlo.shape_bytes(long.shape) == 20


@pytest.mark.parametrize(
    "attrs,n",
    [
        ("replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}", 4),
        ("replica_groups=[2,4]<=[8], dimensions={0}", 4),
        ("replica_groups=[4,2]<=[2,2,2]T(2,1,0), use_global_device_ids=true", 2),
        ("replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}, dimensions={2}", 4),
        ("replica_groups=mesh['axis_0'=1,'axis_1'=2,'axis_2'=4], device_ids=([4,2]T(1,0)) {'axis_1'}, x=1", 2),
        ("replica_groups=mesh['axis_0'=4,'axis_1'=1,'axis_2'=2], device_ids=([2,2,2]T(2,1,0)) {'axis_0':(2)2}", 2),
        ("replica_groups=mesh['a'=4,'b'=2] {'a','b'}", 8),
        ("replica_groups={}, to_apply=%add", 8),
        ("source_target_pairs={{0,1}}", None),
    ],
)
def test_group_size_reads_every_printed_form(attrs, n):
    assert hlo.group_size(attrs, 8) == n


def test_async_collectives_count_once():
    assert comms.collective_kind("all-gather-start") == "all-gather"
    assert comms.collective_kind("all-gather-done") is None
    assert comms.collective_kind("collective-permute-start") == "collective-permute"
    assert comms.collective_kind("fusion") is None


def test_multiplicities_apply_nested_trip_counts():
    module = hlo.parse_module(SNIPPET)
    mult, unknown = hlo.multiplicities(module)
    assert module.entry == "main" and unknown == 0
    # outer: known_trip_count 2; inner: no backend config, its condition compares against constant(3)
    assert mult["accum_body"] == 2 and mult["layer_body"] == 6 and mult["fused_dot"] == 6
    assert "add" not in mult  # a to_apply scalar computation is not a kernel


def test_collectives_counted_with_the_bytes_convention():
    module = hlo.parse_module(SNIPPET)
    weights = comms.parameter_shapes([((32, 64), (4, 1))])  # a [32, 64] weight split 4 ways on dim 0
    moe = comms.MoEShapes(2 * 16 * 32, 16, 128)  # two [16, 32] operands; capacity 16; groups of 128
    c = comms.count_collectives(module, 8, weights, moe)
    k = c["by_kind"]
    # all-to-all: 6 runs × (4-1)/4 × 2 operands of 16·32 floats
    assert k["all-to-all"] == {"count": 6, "bytes": 6 * 0.75 * 2 * 16 * 32 * 4}
    # all-gather: (n-1) × input = 3 × 8·64·4 bytes; all-reduce: 2(n-1)/n × input; permute: the input
    assert k["all-gather"] == {"count": 1, "bytes": 3 * 8 * 64 * 4}
    assert k["all-reduce"] == {"count": 1, "bytes": 2 * 0.5 * 32 * 64 * 4}
    assert k["collective-permute"] == {"count": 1, "bytes": 32 * 64 * 4}
    cat = c["by_category"]
    assert cat["moe_dispatch_combine"]["count"] == 6
    assert cat["weight_gather"] == {"count": 1, "bytes": 3 * 8 * 64 * 4}
    assert cat["gradient_reduction"] == {"count": 1, "bytes": 2 * 0.5 * 32 * 64 * 4}
    assert c["bytes_by_group_size"] == {1: 32 * 64 * 4, 2: 8192.0, 4: 6 * 0.75 * 4096 + 3 * 2048}
    assert c["bytes_per_device"] == sum(v["bytes"] for v in k.values())


def test_dot_flops_counted_per_loop_iteration():
    module = hlo.parse_module(SNIPPET)
    one = 2 * 16 * 8 * 32  # 2 · result elements · contracted size
    assert cost.count_cost(module)["dot_flops"] == 6 * one
    assert cost.count_cost(module, apply_trip_counts=False)["dot_flops"] == one


def test_every_builtin_profile_loads_with_sources():
    assert {"tpu-v4", "tpu-v5p", "a100-80g", "h100-sxm", "h200"} <= set(builtin_names())
    for name in builtin_names():
        hw = load(name)
        assert hw.name == name and hw.sources and hw.peak_flops > 1e14 and hw.hbm_bandwidth > 1e12
    v4 = load("tpu-v4")
    assert v4.peak_flops == 275e12 and v4.collective_bandwidth(64) == 100e9
    h100 = load("h100-sxm")
    assert h100.collective_bandwidth(8) == 450e9 and h100.collective_bandwidth(16) == 50e9


@pytest.mark.parametrize(
    "text,message",
    [
        ("[1, 2]", "a hardware profile is a YAML mapping"),
        ("peak_flops: 1e12\nhbm_bytes: 1\nhbm_bandwidth: 1\nlink_bandwidth: 1\n", "missing 'links_per_collective'"),
        ("peak_flops: fast\n", "peak_flops='fast' is not a number"),
        ("peak_flop: 1\n", "unknown field 'peak_flop'"),
        ("peak_flops: [\n", "is not valid YAML"),
    ],
)
def test_a_bad_profile_is_one_line(tmp_path, text, message):
    path = tmp_path / "my.yaml"
    path.write_text(text)
    with pytest.raises(GLaMError, match=message) as info:
        load(str(path))
    assert "\n" not in str(info.value)


def test_unknown_profile_names_the_choices():
    with pytest.raises(GLaMError, match="tpu-v4"):
        load("tpu-v9")


def test_estimate_is_max_of_compute_and_memory_plus_comms():
    hw = from_dict(
        {"peak_flops": 100, "hbm_bytes": 1, "hbm_bandwidth": 10, "link_bandwidth": 5, "links_per_collective": 2},
        "t",
    )
    e = estimate(
        hw,
        flops_per_device=200,
        hbm_bytes_per_device=30,
        bytes_by_group={4: 20},
        model_flops_per_step=300,
        tokens_per_step=10,
        devices=2,
    )
    assert (e["compute_seconds"], e["memory_seconds"], e["comms_seconds"]) == (2, 3, 2)
    assert e["step_seconds"] == 5 and e["step_seconds_overlapped"] == 3
    assert e["tokens_per_second"] == 2 and e["mfu"] == 300 / (5 * 2 * 100)


def test_index_dispatch_token_table_is_attributed_to_the_moe_layer():
    """[G, S_g + 1, M]: the index dispatch's zero-padded token table, gathered forward, summed backward."""
    moe = comms.MoEShapes(buffer_elements=4096, capacity=8, group_size=128)
    assert comms.classify("all-gather", ["f32[4,129,64]"], "f32[16,129,64]", set(), moe) == "moe_token_gather"
    assert comms.classify_reduced("f32[16,129,64]", set(), moe) == "moe_token_gather"
    assert comms.classify_reduced("f32[16,128,64]", set(), moe) == "activation"
    assert comms.classify_reduced("f32[128,64]", {(128, 64)}, moe) == "gradient_reduction"
    assert comms.classify("all-to-all", ["f32[2,4,8,64]"], "f32[2,4,8,64]", set(), moe) == "moe_dispatch_combine"
    assert comms.classify("all-to-all", ["f32[2,4,16,32]"], "f32[2,4,16,32]", set(), moe) == "activation"  # no C
