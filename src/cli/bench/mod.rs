//! `wgspin bench`: the WGSL kernels against their twins, device memory of the chunked scoring
//! path, and generation / training throughput with the definitions of `scripts/bench_*.py`.

mod measure;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use wgspin::ModelBundle;
use wgspin::generate::profile::{GenProfile, WARMUP_STEPS};
use wgspin::hf::config::ModelConfig;
use wgspin::kernels::bench::BenchSizes;
use wgspin::kernels::registry::bench_kernels;
use wgspin::model::Transformer;
use wgspin::model::random_init::random_model;
use wgspin::train::profile::TrainProfile;

use super::args::{DeviceArgs, DtypeArgs};

/// Benchmarks: WGSL kernels against their twins; generation, training and memory.
///
/// Kernels run beside their burn-ops / sort-based twins; generation and training throughput use
/// the definitions of scripts/bench_*.py (the PyTorch baselines).
#[derive(Subcommand)]
pub enum BenchCommand {
    Kernels(KernelsArgs),
    Generate(GenerateArgs),
    Train(TrainArgs),
    Memory(MemoryArgs),
}

impl BenchCommand {
    pub fn run(self) -> Result<()> {
        match self {
            BenchCommand::Kernels(a) => a.run(),
            BenchCommand::Generate(a) => a.run(),
            BenchCommand::Train(a) => a.run(),
            BenchCommand::Memory(a) => a.run(),
        }
    }
}

/// The model a throughput benchmark runs: a checkpoint, or random weights from its config.
#[derive(Args, Debug)]
pub struct BenchModelArgs {
    /// Hugging Face model folder or Hub id ORG/NAME[@REVISION] (with --random-init: a
    /// config.json or a folder with one).
    #[arg(long, value_parser = crate::cli::args::model_path)]
    model: PathBuf,
    /// Random weights from the config alone (speed only; nothing else is read).
    #[arg(long)]
    random_init: bool,
}

/// Time each WGSL kernel against its twin (median of --iters).
///
/// The token log-prob kernel, the sampler, decode attention, the decode projections, and the
/// training RMSNorm and RoPE (forward + backward).
#[derive(Args, Debug)]
pub struct KernelsArgs {
    #[command(flatten)]
    device: DeviceArgs,
    /// Rows of logits for the log-prob kernel (and rows of the training RMSNorm, positions of its
    /// RoPE).
    #[arg(long, default_value_t = 1024)]
    rows: usize,
    /// Vocabulary size (columns of logits).
    #[arg(long, default_value_t = 32768)]
    vocab: usize,
    /// Rows for the sampler, decode attention and (up to 16) the decode projections.
    #[arg(long, default_value_t = 32)]
    sample_rows: usize,
    /// Timed runs per kernel (the median is reported).
    #[arg(long, default_value_t = 10)]
    iters: usize,
}

impl KernelsArgs {
    fn run(self) -> Result<()> {
        let dev = self.device.select()?;
        let sizes = BenchSizes {
            rows: self.rows,
            vocab: self.vocab,
            sample_rows: self.sample_rows,
            iters: self.iters,
        };
        println!(
            "{:<38} {:<36} {:>10} {:>10} {:>7} {:>9}",
            "kernel", "shape", "ours ms", "twin ms", "ratio", "GB/s"
        );
        for r in bench_kernels(&dev.device, sizes)? {
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
}

/// Greedy decoding tokens/s at several batch sizes, with a profile per batch size.
///
/// Random prompts, a fixed number of new tokens; compare with scripts/bench_generate.py on the
/// same machine.
///
/// Per batch size a profile line follows: kernel launches per decode step (and per layer),
/// host uploads and blocking reads per step, and kernels first launched after the first 8
/// steps and their read-back (compiles or autotuning), all over the steps after those.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: BenchModelArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Comma-separated batch sizes (rows decoded together).
    #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
    batch_sizes: Vec<usize>,
    /// Prompt tokens per row.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// Tokens generated per row.
    #[arg(long, default_value_t = 256)]
    new_tokens: usize,
    #[command(flatten)]
    dtype: DtypeArgs,
}

impl GenerateArgs {
    fn run(self) -> Result<()> {
        let dev = self.device.select()?;
        let dtype = self.dtype.resolve(&dev)?;
        let (config, mut model) = self.model.load(&dev.device)?;
        wgspin::model::precision::set_compute(&mut model, dtype);
        println!(
            "{:>6} {:>11} {:>11} {:>12}  ({} compute)",
            "batch",
            "prompt",
            "new tokens",
            "tokens/s",
            wgspin::model::precision::dtype_name(dtype)
        );
        let (prompt_len, new_tokens) = (self.prompt_len, self.new_tokens);
        for batch in self.batch_sizes {
            let p =
                measure::bench_generate(&model, config.vocab_size, batch, prompt_len, new_tokens)?;
            println!(
                "{batch:>6} {prompt_len:>11} {new_tokens:>11} {:>12.1}",
                p.tokens_per_s
            );
            println!("       {}", profile_line(&p, config.num_layers));
        }
        Ok(())
    }
}

/// SPIN training tokens/s: P pairs of L-token sequences per step.
///
/// Real and generated in one forward pass, RMSprop; compare with scripts/bench_train.py on the
/// same machine.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    model: BenchModelArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Pairs per step.
    #[arg(long, default_value_t = 8)]
    pairs: usize,
    /// Tokens per sequence (prompt + response).
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// Timed steps (after one warmup step).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[command(flatten)]
    lora: wgspin::model::lora::LoraConfig,
    /// Recompute activations in the backward pass (as `train --gradient-checkpointing`).
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Activations' dtype, as `train --dtype` (f16 scales the loss).
    #[arg(long, default_value_t = wgspin::model::precision::Precision::Auto)]
    dtype: wgspin::model::precision::Precision,
}

impl TrainArgs {
    fn run(self) -> Result<()> {
        let (pairs, seq_len, prompt_len, steps) =
            (self.pairs, self.seq_len, self.prompt_len, self.steps);
        anyhow::ensure!(
            prompt_len < seq_len && steps > 0,
            "need prompt-len < seq-len and steps ≥ 1"
        );
        let dev = self.device.select()?;
        self.lora.validate()?;
        let train_device = wgspin::train::TrainConfig::default().train_device(&dev.device);
        let (config, model) = self.model.load(&train_device)?;
        let compute = self.dtype.resolve(&dev.device)?;
        let shape = measure::TrainShape {
            pairs,
            seq_len,
            prompt_len,
            steps,
        };
        let profile = measure::bench_train(
            model,
            config.vocab_size,
            shape,
            &self.lora,
            compute,
            self.gradient_checkpointing,
        )?;
        let secs = wgspin::kernels::bench::median(profile.step_secs.clone());
        let tps = (2 * pairs * seq_len) as f64 / secs;
        let skipped = profile.skipped;
        let mem = match dev.device.memory_pool_usage() {
            Some(u) => format!(
                "{:.1} MiB device memory reserved",
                u.bytes_reserved as f64 / 1048576.0
            ),
            None => measure::peak_rss_bytes()
                .map(|b| format!("{:.1} MiB peak process RSS", b as f64 / 1048576.0))
                .unwrap_or_else(|| "memory not reported here".into()),
        };
        let mut what = if self.lora.enabled() {
            format!(
                "LoRA r={} on {} targets",
                self.lora.rank,
                self.lora.targets.len()
            )
        } else {
            "full fine-tuning".to_string()
        };
        if self.gradient_checkpointing {
            what += ", gradient checkpointing";
        }
        what += &format!(", {compute:?} activations");
        // A step the loss scaler skips makes no optimizer update (and, on the first, no
        // optimizer state): its time and memory are not a trained step's.
        let skipped = if skipped > 0 {
            format!(
                "; {skipped} of {steps} measured steps skipped by the f16 loss scaler (gradients overflowed)"
            )
        } else {
            String::new()
        };
        println!(
            "SPIN train step ({what}): {pairs} pairs x {seq_len} tokens (prompt {prompt_len}): {secs:.4} s/step (median of {steps}), {tps:.1} tokens/s; {mem}{skipped}"
        );
        println!("       {}", train_profile_line(&profile, config.num_layers));
        Ok(())
    }
}

/// Memory of a forward + backward of the chunked lm_head + log-prob path.
///
/// Run once per setting: the number is the device allocator's high-water mark in this process;
/// on the CPU backend, the process's peak resident memory, where the OS reports it.
#[derive(Args, Debug)]
pub struct MemoryArgs {
    #[command(flatten)]
    device: DeviceArgs,
    /// Positions that predict a token.
    #[arg(long, default_value_t = 8192)]
    positions: usize,
    /// Hidden size (columns of the head).
    #[arg(long, default_value_t = 576)]
    hidden: usize,
    /// Vocabulary size (rows of the head).
    #[arg(long, default_value_t = 49152)]
    vocab: usize,
    /// Positions per chunk of logits.
    #[arg(long, default_value_t = 1024)]
    chunk: usize,
}

impl MemoryArgs {
    fn run(self) -> Result<()> {
        let dev = self.device.select()?;
        let (positions, hidden, vocab, chunk) =
            (self.positions, self.hidden, self.vocab, self.chunk);
        // The CPU backend keeps tensors in process memory: there the process's peak resident
        // size is the honest upper bound (it includes the program itself).
        let measured =
            match measure::head_loss_memory(&dev.device, positions, hidden, vocab, chunk)? {
                Some(bytes) => Some((bytes, "reserved")),
                None => measure::peak_rss_bytes().map(|b| (b, "peak process memory")),
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

impl BenchModelArgs {
    fn load(&self, device: &burn::tensor::Device) -> Result<(ModelConfig, Transformer)> {
        if self.random_init {
            return Ok(random_model(&self.model, 0x5EED, device)?);
        }
        let b = ModelBundle::load(&self.model, device)?;
        Ok((b.config, b.model))
    }
}

/// The cost of a training step to the host, as [`profile_line`] says it for decoding.
fn train_profile_line(p: &TrainProfile, layers: usize) -> String {
    let launches = match p.launches_per_step {
        Some(l) => format!(
            "{l:.1} kernel launches/step ({:.1}/layer)",
            l / layers.max(1) as f64
        ),
        None => "no kernel launches (CPU backend)".into(),
    };
    let compiled = match p.new_kernels_after_warmup {
        Some(n) => format!(", {n} kernels first launched after the warm-up step"),
        None => String::new(),
    };
    format!(
        "profile over {} steps after warm-up: {launches}, {:.2} host uploads/step, {:.2} blocking reads/step{compiled}",
        p.step_secs.len(),
        p.uploads_per_step,
        p.reads_per_step,
    )
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
        "profile over {} steps after warm-up: {launches}, {:.2} host uploads/step, {:.3} blocking reads/step{compiled}; warm decode {:.1} tok/s; KV cache {:.2} MiB",
        p.measured_steps,
        p.uploads_per_step,
        p.reads_per_step,
        p.decode_tokens_per_s,
        p.kv_cache_bytes as f64 / 1048576.0
    )
}
