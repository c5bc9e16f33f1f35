"""DDP's buffer-sync flag across torch versions (mcl_dist.training.engine.buffer_sync_kwargs).

torch >= 2.13 calls it forward_sync_buffers; older torch (the GPU image of docs/cluster.md ships
2.11) only knows broadcast_buffers and raises TypeError on the new name. Only one torch can be
installed here, so the old signature is a stand-in class with torch 2.11's parameter list."""
import inspect

from torch.nn.parallel import DistributedDataParallel

from mcl_dist.training.engine import buffer_sync_kwargs


class DDP211:  # the parameters of DistributedDataParallel.__init__ in torch 2.11
    def __init__(self, module, device_ids=None, output_device=None, dim=0, broadcast_buffers=True,
                 init_sync=True, process_group=None, bucket_cap_mb=None, find_unused_parameters=False,
                 check_reduction=False, gradient_as_bucket_view=False, static_graph=False,
                 delay_all_reduce_named_params=None, param_to_hook_all_reduce=None, mixed_precision=None,
                 device_mesh=None, skip_all_reduce_unused_params=False):
        pass


def test_installed_torch_gets_a_flag_its_ddp_accepts():
    kw = buffer_sync_kwargs(False)
    assert set(kw) <= set(inspect.signature(DistributedDataParallel.__init__).parameters)
    assert list(kw.values()) == [False]


def test_older_torch_gets_broadcast_buffers():
    assert buffer_sync_kwargs(True, ddp=DDP211) == {"broadcast_buffers": True}
    assert buffer_sync_kwargs(False, ddp=DDP211) == {"broadcast_buffers": False}
    inspect.signature(DDP211).bind(object(), **buffer_sync_kwargs(False, ddp=DDP211))  # accepted
