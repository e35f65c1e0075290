"""What the PyTorch baselines (bench_generate.py, bench_train.py) share: the flags that pick the
model, its dtype, the device and the thread count, and loading the model from them, so both
baselines measure the same model the same way."""
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_model_args(p):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="Hugging Face model folder")
    src.add_argument("--config", help="config.json; random-init LlamaForCausalLM (seed 0)")


def add_run_args(p):
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch default)")


def set_threads(args):
    if args.threads > 0:
        torch.set_num_threads(args.threads)


def load_model(args, dtype):
    """The --model folder, or --config randomly initialised from seed 0, on --device in `dtype`."""
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    else:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig.from_json_file(args.config))
    return model.to(device=args.device, dtype=dtype)


def sync(device):
    """Waits for queued CUDA work, so that wall-clock times cover it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
