//! `wgspin bench`: the WGSL kernels against their twins, device memory of the chunked scoring
//! path, and generation / training throughput with the definitions of `scripts/bench_*.py`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use wgspin::ModelBundle;
use wgspin::bench::{self, BenchSizes};
use wgspin::config::ModelConfig;
use wgspin::device::DeviceSpec;
use wgspin::generate::profile::{GenProfile, WARMUP_STEPS};
use wgspin::model::Transformer;
use wgspin::model::random_init::random_model;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time the token log-prob kernel, the sampler, decode attention and the decode projections
    /// against their twins (median of --iters).
    Kernels {
        #[arg(long, default_value = "auto")]
        device: DeviceSpec,
        /// Rows of logits for the log-prob kernel.
        #[arg(long, default_value_t = 1024)]
        rows: usize,
        #[arg(long, default_value_t = 32768)]
        vocab: usize,
        /// Rows for the sampler, decode attention and (up to 16) the decode projections.
        #[arg(long, default_value_t = 32)]
        sample_rows: usize,
        #[arg(long, default_value_t = 10)]
        iters: usize,
    },
    /// Generated tokens/s of greedy decoding at several batch sizes (random prompts, a fixed
    /// number of new tokens; compare with scripts/bench_generate.py on the same machine).
    ///
    /// Per batch size a profile line follows: kernel launches per decode step (and per layer),
    /// host uploads and blocking reads per step, and kernels first launched after the first 8
    /// steps and their read-back (compiles or autotuning), all over the steps after those.
    Generate {
        /// Hugging Face model folder (with --random-init: a config.json or a folder with one).
        #[arg(long)]
        model: PathBuf,
        /// Random weights from the config alone (speed only; nothing else is read).
        #[arg(long)]
        random_init: bool,
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
        /// Hugging Face model folder (with --random-init: a config.json or a folder with one).
        #[arg(long)]
        model: PathBuf,
        /// Random weights from the config alone (speed only; nothing else is read).
        #[arg(long)]
        random_init: bool,
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
            random_init,
            device,
            batch_sizes,
            prompt_len,
            new_tokens,
        } => {
            let dev = super::select_device(device)?;
            let (config, model) = load_model(&model, random_init, &dev.device)?;
            println!(
                "{:>6} {:>11} {:>11} {:>12}",
                "batch", "prompt", "new tokens", "tokens/s"
            );
            for batch in batch_sizes {
                let p = bench::bench_generate(
                    &model,
                    config.vocab_size,
                    batch,
                    prompt_len,
                    new_tokens,
                )?;
                println!(
                    "{batch:>6} {prompt_len:>11} {new_tokens:>11} {:>12.1}",
                    p.tokens_per_s
                );
                println!("       {}", profile_line(&p, config.num_layers));
            }
            Ok(())
        }
        BenchCommand::Train {
            model,
            random_init,
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
            let (config, model) = load_model(&model, random_init, &dev.device.clone().autodiff())?;
            let (tps, secs) =
                bench::bench_train(model, config.vocab_size, pairs, seq_len, prompt_len, steps)?;
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

/// The model of a benchmark: the checkpoint at `path`, or random weights from its config.
fn load_model(
    path: &std::path::Path,
    random_init: bool,
    device: &burn::tensor::Device,
) -> Result<(ModelConfig, Transformer)> {
    if random_init {
        return Ok(random_model(path, 0x5EED, device)?);
    }
    let b = ModelBundle::load(path, device)?;
    Ok((b.config, b.model))
}

fn profile_line(p: &GenProfile, layers: usize) -> String {
    if p.measured_steps == 0 {
        return format!(
            "profile: needs more than {} decode steps (raise --new-tokens)",
            WARMUP_STEPS + 1
        );
    }
    let launches = match p.launches_per_step {
        Some(l) => format!(
            "{l:.1} kernel launches/step ({:.1}/layer)",
            l / layers.max(1) as f64
        ),
        None => "no kernel launches (CPU backend)".into(),
    };
    let compiled = match p.new_kernels_after_warmup {
        Some(n) => format!(", {n} kernels first launched after step {WARMUP_STEPS}"),
        None => String::new(),
    };
    format!(
        "profile over {} steps after warm-up: {launches}, {:.2} host uploads/step, {:.3} blocking reads/step{compiled}",
        p.measured_steps, p.uploads_per_step, p.reads_per_step
    )
}

fn bench_kernels(spec: DeviceSpec, sizes: BenchSizes) -> Result<()> {
    let dev = super::select_device(spec)?;
    println!(
        "{:<38} {:<36} {:>10} {:>10} {:>7} {:>9}",
        "kernel", "shape", "ours ms", "twin ms", "ratio", "GB/s"
    );
    for r in bench::bench_kernels(&dev.device, sizes)? {
        println!(
            "{:<38} {:<36} {:>10.3} {:>10.3} {:>6.2}x {:>9.2}",
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
