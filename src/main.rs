//! The `wgspin` command line: argument parsing and user-facing output; the work is in the library.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use wgspin::bench::{self, BenchSizes};
use wgspin::device::{self, DeviceSpec};
use wgspin::score::{ScoreOptions, TokenizedPair, score_all};
use wgspin::{ModelBundle, data, fsutil};

#[derive(Parser)]
#[command(
    name = "wgspin",
    version,
    about = "SPIN (Self-Play fIne-tuNing) of small language models on any GPU wgpu reaches, with a CPU fallback"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the GPU adapters wgpu can use (index for --device gpu:N, backend, type, f16 support).
    Devices,
    /// Log-probabilities of responses given prompts, as the SPIN trainer computes them.
    ///
    /// Input: JSONL rows {"prompt": str, "response": str}. Output: JSONL rows
    /// {"index", "logprob", "tokens", "token_logprobs"} in input order. The prompt is rendered
    /// with the model's chat template (add_generation_prompt) and the response gets eos appended.
    Logprobs {
        /// Hugging Face model folder (config.json, tokenizer.json, *.safetensors) or a .gguf file.
        #[arg(long)]
        model: PathBuf,
        /// JSONL file of {"prompt", "response"} rows.
        #[arg(long)]
        data: PathBuf,
        /// Output JSONL file (stdout when omitted).
        #[arg(long)]
        out: Option<PathBuf>,
        /// auto, gpu, gpu:N (see `wgspin devices`) or cpu.
        #[arg(long, default_value = "auto")]
        device: DeviceSpec,
        /// Sequences per forward pass.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
    },
    /// Convert a GGUF model (llama / qwen2) to a Hugging Face folder (weights dequantized).
    Convert {
        /// The .gguf file.
        #[arg(long)]
        model: PathBuf,
        /// Output folder (must not exist; written atomically).
        #[arg(long)]
        out: PathBuf,
        /// Storage type of model.safetensors: f32, f16 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// Export a Hugging Face folder to a GGUF file that llama.cpp loads.
    ExportGguf {
        /// Hugging Face model folder.
        #[arg(long)]
        model: PathBuf,
        /// Output .gguf file (written atomically).
        #[arg(long)]
        out: PathBuf,
        /// Matrix type: f16, f32 or q8_0 (norms stay f32).
        #[arg(long, default_value = "f16")]
        dtype: wgspin::gguf::writer::ExportDtype,
    },
    /// Benchmarks: each WGSL kernel against its burn-ops / sort-based twin, side by side.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time the token log-prob kernel and the sampler against their twins (median of --iters).
    Kernels {
        #[arg(long, default_value = "auto")]
        device: DeviceSpec,
        /// Rows of logits for the log-prob kernel.
        #[arg(long, default_value_t = 1024)]
        rows: usize,
        #[arg(long, default_value_t = 32768)]
        vocab: usize,
        /// Rows for the sampler.
        #[arg(long, default_value_t = 32)]
        sample_rows: usize,
        #[arg(long, default_value_t = 10)]
        iters: usize,
    },
    /// Device memory reserved by a forward + backward of the chunked lm_head + log-prob path
    /// (run once per setting: the number is the allocator's high-water mark in this process).
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Devices => devices(),
        Command::Logprobs {
            model,
            data,
            out,
            device,
            batch_size,
        } => logprobs(model, data, out, device, batch_size),
        Command::Convert { model, out, dtype } => {
            let dtype = match dtype.as_str() {
                "f32" => wgspin::weights::StoredDtype::F32,
                "f16" => wgspin::weights::StoredDtype::F16,
                "bf16" => wgspin::weights::StoredDtype::BF16,
                other => anyhow::bail!("--dtype {other:?}: expected f32, f16 or bf16"),
            };
            let g = wgspin::gguf::GgufModel::load(&model)
                .with_context(|| format!("reading {}", model.display()))?;
            g.write_hf_folder(&out, dtype)?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Command::ExportGguf { model, out, dtype } => {
            wgspin::gguf::writer::export_hf_folder(&model, &out, dtype)
                .with_context(|| format!("exporting {}", model.display()))?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Command::Bench(BenchCommand::Kernels {
            device,
            rows,
            vocab,
            sample_rows,
            iters,
        }) => bench_kernels(
            device,
            BenchSizes {
                rows,
                vocab,
                sample_rows,
                iters,
            },
        ),
        Command::Bench(BenchCommand::Memory {
            device,
            positions,
            hidden,
            vocab,
            chunk,
        }) => {
            let dev = device::select(device)?;
            println!("device: {}", dev.description);
            match bench::head_loss_memory(&dev.device, positions, hidden, vocab, chunk)? {
                Some(bytes) => println!(
                    "lm_head + log-prob forward+backward, {positions} positions, [{vocab} x {hidden}] head, chunk {chunk}: {:.1} MiB reserved (unchunked logits alone would be {:.1} MiB)",
                    bytes as f64 / 1048576.0,
                    (positions * vocab * 4) as f64 / 1048576.0
                ),
                None => println!("this backend does not report memory use"),
            }
            Ok(())
        }
    }
}

fn bench_kernels(spec: DeviceSpec, sizes: BenchSizes) -> Result<()> {
    let dev = device::select(spec)?;
    println!("device: {}", dev.description);
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

fn devices() -> Result<()> {
    let adapters = device::list_adapters();
    if adapters.is_empty() {
        println!("No GPU adapter found. Commands still run with --device cpu.");
        println!("On Linux, `apt-get install mesa-vulkan-drivers` gives a software Vulkan device.");
        return Ok(());
    }
    println!(
        "{:<7} {:<40} {:<8} {:<11} {:<4} driver",
        "device", "name", "backend", "type", "f16"
    );
    for a in &adapters {
        println!(
            "gpu:{:<3} {:<40} {:<8} {:<11} {:<4} {}",
            a.index,
            a.name,
            format!("{:?}", a.backend),
            a.type_name(),
            if a.shader_f16 { "yes" } else { "no" },
            a.driver
        );
    }
    println!("cpu     burn CPU backend (always available)");
    Ok(())
}

fn logprobs(
    model_dir: PathBuf,
    data_path: PathBuf,
    out: Option<PathBuf>,
    spec: DeviceSpec,
    batch_size: usize,
) -> Result<()> {
    if batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    let dev = device::select(spec)?;
    eprintln!("device: {}", dev.description);
    let rows = data::read_prompt_responses(&data_path)?;
    let bundle = ModelBundle::load(&model_dir, &dev.device)
        .with_context(|| format!("loading model {}", model_dir.display()))?;
    let tok = &bundle.tokenizer;
    let pairs = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            TokenizedPair::new(tok, &r.prompt, &r.response)
                .with_context(|| format!("{}:{}: tokenizing", data_path.display(), i + 1))
        })
        .collect::<Result<Vec<_>>>()?;
    let pad = tok.pad_token_id.unwrap_or(tok.eos_token_id);
    let total = pairs.len();
    let mut done = 0;
    let start = std::time::Instant::now();
    let scores = score_all(
        &bundle.model,
        &pairs,
        pad,
        ScoreOptions {
            batch_size,
            ..Default::default()
        },
        |n| {
            done += n;
            eprintln!("scored {done}/{total}");
        },
    )?;
    let secs = start.elapsed().as_secs_f64();
    let mut text = String::new();
    for (i, lp) in scores.iter().enumerate() {
        let sum: f64 = lp.iter().map(|&x| x as f64).sum();
        let row = serde_json::json!({"index": i, "logprob": sum, "tokens": lp.len(), "token_logprobs": lp});
        text.push_str(&row.to_string());
        text.push('\n');
    }
    match out {
        Some(path) => fsutil::write_atomic(&path, text.as_bytes())?,
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    eprintln!("scored {total} sequences in {secs:.2}s");
    Ok(())
}
