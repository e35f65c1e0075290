//! `wgspin bench`: the WGSL kernels against their twins, device memory of the chunked scoring
//! path, and generation / training throughput with the definitions of `scripts/bench_*.py`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use wgspin::ModelBundle;
use wgspin::bench::{self, BenchSizes};
use wgspin::device::DeviceSpec;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time the token log-prob kernel, the sampler and decode attention against their twins
    /// (median of --iters).
    Kernels {
        #[arg(long, default_value = "auto")]
        device: DeviceSpec,
        /// Rows of logits for the log-prob kernel.
        #[arg(long, default_value_t = 1024)]
        rows: usize,
        #[arg(long, default_value_t = 32768)]
        vocab: usize,
        /// Rows for the sampler and the decode-attention kernel.
        #[arg(long, default_value_t = 32)]
        sample_rows: usize,
        #[arg(long, default_value_t = 10)]
        iters: usize,
    },
    /// Generated tokens/s of greedy decoding at several batch sizes (random prompts, a fixed
    /// number of new tokens; compare with scripts/bench_generate.py on the same machine).
    Generate {
        /// Hugging Face model folder.
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "auto")]
        device: DeviceSpec,
        /// Comma-separated batch sizes.
        #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
        batch_sizes: Vec<usize>,
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        #[arg(long, default_value_t = 256)]
        new_tokens: usize,
    },
    /// SPIN training tokens/s: P pairs of L-token sequences per step, real and generated in one
    /// forward pass, RMSprop (compare with scripts/bench_train.py on the same machine).
    Train {
        /// Hugging Face model folder.
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "auto")]
        device: DeviceSpec,
        #[arg(long, default_value_t = 8)]
        pairs: usize,
        #[arg(long, default_value_t = 512)]
        seq_len: usize,
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        /// Timed steps (after one warmup step).
        #[arg(long, default_value_t = 5)]
        steps: usize,
    },
    /// Device memory reserved by a forward + backward of the chunked lm_head + log-prob path
    /// (run once per setting: the number is the allocator's high-water mark in this process; on
    /// the CPU backend, the process's peak resident memory, where the OS reports it).
    Memory {
        #[arg(long, default_value = "auto")]
        device: DeviceSpec,
        #[arg(long, default_value_t = 8192)]
        positions: usize,
        #[arg(long, default_value_t = 576)]
        hidden: usize,
        #[arg(long, default_value_t = 49152)]
        vocab: usize,
        /// Positions per chunk of logits.
        #[arg(long, default_value_t = 1024)]
        chunk: usize,
    },
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Kernels {
            device,
            rows,
            vocab,
            sample_rows,
            iters,
        } => bench_kernels(
            device,
            BenchSizes {
                rows,
                vocab,
                sample_rows,
                iters,
            },
        ),
        BenchCommand::Generate {
            model,
            device,
            batch_sizes,
            prompt_len,
            new_tokens,
        } => {
            let dev = super::select_device(device)?;
            let b = ModelBundle::load(&model, &dev.device)?;
            println!(
                "{:>6} {:>11} {:>11} {:>12}",
                "batch", "prompt", "new tokens", "tokens/s"
            );
            for batch in batch_sizes {
                let tps = bench::bench_generate(
                    &b.model,
                    b.config.vocab_size,
                    batch,
                    prompt_len,
                    new_tokens,
                )?;
                println!("{batch:>6} {prompt_len:>11} {new_tokens:>11} {tps:>12.1}");
            }
            Ok(())
        }
        BenchCommand::Train {
            model,
            device,
            pairs,
            seq_len,
            prompt_len,
            steps,
        } => {
            anyhow::ensure!(
                prompt_len < seq_len && steps > 0,
                "need prompt-len < seq-len and steps ≥ 1"
            );
            let dev = super::select_device(device)?;
            let b = ModelBundle::load(&model, &dev.device.clone().autodiff())?;
            let (tps, secs) = bench::bench_train(
                b.model,
                b.config.vocab_size,
                pairs,
                seq_len,
                prompt_len,
                steps,
            )?;
            let mem = match dev.device.memory_pool_usage() {
                Some(u) => format!(
                    "{:.1} MiB device memory reserved",
                    u.bytes_reserved as f64 / 1048576.0
                ),
                None => bench::peak_rss_bytes()
                    .map(|b| format!("{:.1} MiB peak process RSS", b as f64 / 1048576.0))
                    .unwrap_or_else(|| "memory not reported here".into()),
            };
            println!(
                "SPIN train step: {pairs} pairs x {seq_len} tokens (prompt {prompt_len}): {secs:.4} s/step (median of {steps}), {tps:.1} tokens/s; {mem}"
            );
            Ok(())
        }
        BenchCommand::Memory {
            device,
            positions,
            hidden,
            vocab,
            chunk,
        } => {
            let dev = super::select_device(device)?;
            // The CPU backend keeps tensors in process memory: there the process's peak
            // resident size is the honest upper bound (it includes the program itself).
            let measured =
                match bench::head_loss_memory(&dev.device, positions, hidden, vocab, chunk)? {
                    Some(bytes) => Some((bytes, "reserved")),
                    None => bench::peak_rss_bytes().map(|b| (b, "peak process memory")),
                };
            match measured {
                Some((bytes, what)) => println!(
                    "lm_head + log-prob forward+backward, {positions} positions, [{vocab} x {hidden}] head, chunk {chunk}: {:.1} MiB {what} (unchunked logits alone would be {:.1} MiB)",
                    bytes as f64 / 1048576.0,
                    (positions * vocab * 4) as f64 / 1048576.0
                ),
                None => println!("this backend and OS do not report memory use"),
            }
            Ok(())
        }
    }
}

fn bench_kernels(spec: DeviceSpec, sizes: BenchSizes) -> Result<()> {
    let dev = super::select_device(spec)?;
    println!(
        "{:<38} {:<22} {:>10} {:>10} {:>7} {:>9}",
        "kernel", "shape", "ours ms", "twin ms", "ratio", "GB/s"
    );
    for r in bench::bench_kernels(&dev.device, sizes)? {
        println!(
            "{:<38} {:<22} {:>10.3} {:>10.3} {:>6.2}x {:>9.2}",
            r.name,
            r.shape,
            r.ours_ms,
            r.twin_ms,
            r.ratio(),
            r.gb_per_s
        );
    }
    Ok(())
}
