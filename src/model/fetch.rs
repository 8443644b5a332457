//! Downloads official weights over HTTP(S) into the weight cache: resumable (HTTP Range),
//! checked against a sha256, converted to safetensors, and moved into place only once whole
//! and verified. The partial download waits in a hidden `.partial/` inside the model
//! directory, never under a model's file name, so a cut connection or a wrong checksum never
//! leaves a model file behind.

use super::weights;
use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Where interrupted downloads wait to be resumed: a hidden directory inside the model
/// directory (no model file is ever named like it).
pub fn partial_dir(cache: &Path) -> PathBuf {
    cache.join(".partial")
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(crate::io::hex(&h.finalize()))
}

/// Whether `actual` (64 hex digits) satisfies `expected`: equal, or starting with it when the
/// expected value is the short prefix torchvision puts in its file names.
pub fn hash_matches(actual: &str, expected: &str) -> bool {
    let expected = expected.to_ascii_lowercase();
    expected.len() >= 8 && actual.starts_with(&expected)
}

/// The largest download accepted: more than any model in the zoo (VGG19 is 548 MB).
const MAX_DOWNLOAD: u64 = 2 << 30;

/// Downloads `url` to `partial`, resuming from what is already there. `progress(done, total)`.
/// A server that does not connect, answer or send within `timeout` is an error (resumable).
fn download(
    url: &str,
    partial: &Path,
    timeout: std::time::Duration,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<()> {
    let net_err = |reason: String| Error::Network { url: url.to_owned(), reason };
    let write_err = |e: std::io::Error| Error::Write { path: partial.to_owned(), reason: e.to_string() };
    let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    let mut req = ureq::get(url);
    if have > 0 {
        req = req.header("Range", &format!("bytes={have}-"));
    }
    let resp = req
        .config()
        .http_status_as_error(false)
        .timeout_connect(Some(timeout))
        .timeout_recv_response(Some(timeout))
        .timeout_per_read(Some(timeout))
        .build()
        .call()
        .map_err(|e| net_err(e.to_string()))?;
    let status = resp.status().as_u16();
    let (mut file, start) = match status {
        206 if have > 0 => (std::fs::OpenOptions::new().append(true).open(partial).map_err(write_err)?, have),
        200 => (std::fs::File::create(partial).map_err(write_err)?, 0),
        416 if have > 0 => return Ok(()), // nothing left to send: the partial file is whole
        s => return Err(net_err(format!("HTTP status {s}"))),
    };
    let length = resp.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let total = length.map(|l| l + start);
    if let Some(t) = total.filter(|&t| t > MAX_DOWNLOAD) {
        return Err(net_err(format!("the server offers {t} bytes, more than any model ({MAX_DOWNLOAD})")));
    }
    let mut body = resp.into_body().into_with_config().limit(u64::MAX).reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut done = start;
    progress(done, total);
    loop {
        let n = body.read(&mut buf).map_err(|e| {
            net_err(format!("connection lost after {done} bytes ({e}); run the same command again to resume"))
        })?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).map_err(write_err)?;
        done += n as u64;
        if done > total.unwrap_or(MAX_DOWNLOAD) {
            return Err(net_err(format!(
                "the server sent more than the {} bytes it announced",
                total.unwrap_or(MAX_DOWNLOAD)
            )));
        }
        progress(done, total);
    }
    file.sync_all().map_err(write_err)?;
    if let Some(t) = total.filter(|&t| t != done) {
        return Err(net_err(format!(
            "connection closed after {done} of {t} bytes; run the same command again to resume"
        )));
    }
    Ok(())
}

/// Fetches weights for `model` from `url` into `dir` (the cache by default), verifying
/// `sha256` (full, or torchvision's prefix). Returns the path of the installed safetensors.
pub fn fetch(
    model: &str,
    url: &str,
    sha256: &str,
    dir: &Path,
    timeout: std::time::Duration,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<PathBuf> {
    let info = super::info(model)?;
    let dest = dir.join(info.file);
    let pdir = partial_dir(dir);
    std::fs::create_dir_all(&pdir).map_err(|e| Error::Output { path: pdir.clone(), reason: e.to_string() })?;
    let partial = pdir.join(format!("{model}.part"));
    download(url, &partial, timeout, progress)?;
    let actual = sha256_file(&partial)?;
    if !hash_matches(&actual, sha256) {
        let _ = std::fs::remove_file(&partial);
        return Err(Error::Network {
            url: url.to_owned(),
            reason: format!("checksum mismatch: got sha256 {actual}, expected {sha256}; the download was discarded"),
        });
    }
    let result = install(model, &partial, &dest);
    let _ = std::fs::remove_file(&partial);
    result.map(|_| dest)
}

/// Converts a verified download (PyTorch checkpoint or safetensors) into `dest`, and proves it
/// builds the network before leaving it there.
pub fn install(model: &str, src: &Path, dest: &Path) -> Result<()> {
    if let Some(d) = dest.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::Output { path: d.to_owned(), reason: e.to_string() })?;
    }
    // Converted and proven beside the destination: the installed model stays until the new
    // one builds the network.
    let staged = crate::io::Staged::new(dest);
    if is_safetensors(src)? {
        std::fs::copy(src, staged.path())
            .map_err(|e| Error::Output { path: dest.to_owned(), reason: e.to_string() })?;
    } else {
        weights::import_pth(src, staged.path())?;
    }
    // Errors about the staged copy are about the file the user gave.
    let theirs = |e: Error| match e {
        Error::Weights { reason, .. } => Error::Weights { path: src.to_owned(), reason },
        e => e,
    };
    let net = super::load_from(model, staged.path()).map_err(theirs)?;
    weights::check_finite(staged.path()).map_err(theirs)?;
    check_responds(net.as_ref()).map_err(|reason| Error::Weights { path: src.to_owned(), reason })?;
    staged.commit()?;
    Ok(())
}

/// Whether the network's deepest layer tells two different images apart: weights that are all
/// zero (or otherwise dead) build the network but leave nothing to dream.
fn check_responds(net: &dyn super::FeatureNet) -> std::result::Result<(), String> {
    use candle_core::{Device, Tensor};
    let deepest = net.layer_names().pop().ok_or("the network has no layers")?;
    let taps = [deepest.clone()];
    let features = |seed: u32| -> crate::Result<Tensor> {
        let values: Vec<f32> = (0..3 * 160 * 160)
            .map(|i: u32| ((i.wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let x = Tensor::from_vec(values, (1, 3, 160, 160), &Device::Cpu)?;
        Ok(net.forward(&x, &taps, false)?.taps[&deepest].clone())
    };
    let differs = (|| -> crate::Result<f32> {
        let (a, b) = (features(1)?, features(0x5bd1e995)?);
        Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
    })()
    .map_err(|e| format!("the network does not run on a test image: {e}"))?;
    match differs > 0.0 {
        true => Ok(()),
        false => {
            Err(format!("its layer {deepest} gives the same output for every image (all-zero weights?); not installed"))
        }
    }
}

/// A safetensors file opens with a little-endian u64 header length and a JSON object.
fn is_safetensors(path: &Path) -> Result<bool> {
    let mut head = [0u8; 9];
    let mut f = std::fs::File::open(path)?;
    Ok(f.read_exact(&mut head).is_ok()
        && head[8] == b'{'
        && u64::from_le_bytes(head[..8].try_into().unwrap()) < 100_000_000)
}
