//! Library usage: load a Hugging Face model folder and score one (prompt, response) pair.
//!
//! cargo run --release --example score -- tests/fixtures/tiny-qwen2-f32 "What is 2+2?" "4"

use anyhow::{Context, Result};
use wgspin::device::{self, DeviceSpec};
use wgspin::train::score::{ScoreOptions, TokenizedPair, score_all};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(model), Some(prompt), Some(response)) = (args.next(), args.next(), args.next())
    else {
        anyhow::bail!("usage: score MODEL_DIR PROMPT RESPONSE");
    };
    let dev = device::select(DeviceSpec::Auto)?;
    let bundle = wgspin::ModelBundle::load(model.as_ref(), &dev.device)
        .with_context(|| format!("loading {model}"))?;
    let pair = TokenizedPair::new(&bundle.tokenizer, &prompt, &response)?;
    let pad = bundle.tokenizer.eos_token_id;
    let lp = score_all(&bundle.model, &[pair], pad, ScoreOptions::default(), |_| {})?;
    let total: f32 = lp[0].iter().sum();
    println!("device: {}", dev.description);
    println!(
        "log p(response | prompt) = {total:.4} over {} tokens",
        lp[0].len()
    );
    Ok(())
}
