//! `deepdream models fetch` against a real HTTP server on 127.0.0.1 serving a real weight file
//! (the EfficientNet-Lite0 safetensors in models/), through the binary's real HTTP client.

use crate::util::repo;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// Serves `body` at any path, honouring `Range: bytes=N-`. The first `cut_first` responses
/// stop after half the body, as a dropped connection does. Records each Range header seen.
struct Server {
    url: String,
    ranges: Arc<Mutex<Vec<Option<String>>>>,
}

fn serve(body: Vec<u8>, cut_first: usize, requests: usize) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/lite0.safetensors", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().take(requests).enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = Some(v.trim().trim_end_matches('-').to_owned());
                }
            }
            seen.lock().unwrap().push(range.clone());
            let start: usize = range.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0);
            let rest = &body[start..];
            let head = if start > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                    rest.len(),
                    body.len() - 1,
                    body.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
                    rest.len()
                )
            };
            let _ = stream.write_all(head.as_bytes());
            let send = if n < cut_first { &rest[..rest.len() / 2] } else { rest };
            let _ = stream.write_all(send);
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    });
    Server { url, ranges }
}

fn fetch(url: &str, sha: &str, dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_deepdream"))
        .args(["models", "fetch", "efficientnet-lite0", "--url", url, "--sha256", sha, "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap()
}

fn weight_file() -> (Vec<u8>, String) {
    let path = repo().join("models/efficientnet_lite0.safetensors");
    let sha = deepdream::model::fetch::sha256_file(&path).unwrap();
    (std::fs::read(path).unwrap(), sha)
}

/// A models directory not made yet, inside a fresh scratch directory (kept alive by the first
/// value).
fn cache(name: &str) -> (crate::util::Scratch, std::path::PathBuf) {
    let root = crate::util::scratch(&format!("fetch-{name}"));
    let d = root.join("models");
    (root, d)
}

#[test]
fn cut_connection_then_resume() {
    let (body, sha) = weight_file();
    let server = serve(body.clone(), 1, 2);
    let (_root, dir) = cache("resume");
    let o = fetch(&server.url, &sha, &dir);
    // A network failure, not a mistake in the command: exit 1.
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("resume"));
    assert!(!dir.join("efficientnet_lite0.safetensors").exists(), "a cut download leaves no model file");
    let o = fetch(&server.url, &sha, &dir);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ranges = server.ranges.lock().unwrap().clone();
    assert_eq!(ranges, vec![None, Some((body.len() / 2).to_string())], "the second request resumes");
    let installed = dir.join("efficientnet_lite0.safetensors");
    assert_eq!(std::fs::read(&installed).unwrap(), body);
    deepdream::model::load_from("efficientnet-lite0", &installed).unwrap();
    assert_eq!(std::fs::read_dir(deepdream::model::fetch::partial_dir(&dir)).unwrap().count(), 0, "partial removed");
}

#[test]
fn wrong_checksum_leaves_nothing() {
    let (body, _) = weight_file();
    let server = serve(body, 0, 1);
    let (_root, dir) = cache("checksum");
    let o = fetch(&server.url, &"0".repeat(64), &dir);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(!dir.join("efficientnet_lite0.safetensors").exists());
    assert_eq!(std::fs::read_dir(deepdream::model::fetch::partial_dir(&dir)).unwrap().count(), 0, "no partial kept");
}

#[test]
fn torchvision_prefix_checks() {
    use deepdream::model::fetch::hash_matches;
    let full = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889";
    assert!(hash_matches(full, full));
    assert!(hash_matches(full, "b0353104"));
    assert!(!hash_matches(full, "b0353105"));
    assert!(!hash_matches(full, "b03"), "too short a prefix proves nothing");
}

/// `deepdream models import FILE --as efficientnet-lite0 --dir DIR`.
fn import(file: &std::path::Path, dir: &std::path::Path) -> std::process::Output {
    let (file, dir) = (file.to_str().unwrap(), dir.to_str().unwrap());
    crate::util::deepdream(&["models", "import", file, "--as", "efficientnet-lite0", "--dir", dir])
}

#[test]
fn a_bad_import_keeps_the_installed_model() {
    let (_root, dir) = cache("keep");
    let installed = dir.join("efficientnet_lite0.safetensors");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(repo().join("models/efficientnet_lite0.safetensors"), &installed).unwrap();
    let before = std::fs::read(&installed).unwrap();
    // A real safetensors file that is not EfficientNet-Lite0 (wrong tensors).
    let wrong = dir.join("wrong.safetensors");
    let t = candle_core::Tensor::zeros((3, 4), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(&std::collections::HashMap::from([("x".to_owned(), t)]), &wrong).unwrap();
    let o = import(&wrong, &dir);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&installed).unwrap(), before, "the installed model is untouched");
    // Another variant's weights build a network of their own shape: refused by depth and width.
    let o = crate::util::deepdream(&[
        "models",
        "import",
        installed.to_str().unwrap(),
        "--as",
        "efficientnet-lite1",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("not efficientnet-lite1") && !err.contains(".tmp"), "{err}");
    // The right tensors, one of them all NaN: it builds the network, and would dream black.
    let mut tensors = candle_core::safetensors::load(&installed, &candle_core::Device::Cpu).unwrap();
    let key = tensors.keys().min().unwrap().clone();
    let nan = (tensors[&key].ones_like().unwrap() * f64::NAN).unwrap();
    tensors.insert(key, nan);
    let poisoned = dir.join("poisoned.safetensors");
    candle_core::safetensors::save(&tensors, &poisoned).unwrap();
    let o = import(&poisoned, &dir);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("not finite"), "{err}");
    assert_eq!(std::fs::read(&installed).unwrap(), before, "the installed model is untouched");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 3, "no staging file left: {left:?}");
}

/// A server that accepts, then goes silent: before answering, or after half the body.
fn silent_server(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/lite0.safetensors", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            if n == 1 {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body[..body.len() / 2]);
            }
            held.push(stream); // never closed, never finished
        }
    });
    url
}

#[test]
fn a_silent_server_times_out() {
    let (body, sha) = weight_file();
    let url = silent_server(body);
    let (_root, dir) = cache("silent");
    for _ in 0..2 {
        let start = std::time::Instant::now();
        let o = Command::new(env!("CARGO_BIN_EXE_deepdream"))
            .args(["models", "fetch", "efficientnet-lite0", "--url", &url, "--sha256", &sha])
            .args(["--dir", dir.to_str().unwrap(), "--timeout", "1"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("download of") && start.elapsed().as_secs() < 20, "{err}");
        assert!(!dir.join("efficientnet_lite0.safetensors").exists());
    }
}

#[test]
fn bad_download_requests_are_refused_before_any_download() {
    let (_root, dir) = cache("badurl");
    for (url, sha, needle) in [
        ("not a url", "0123456789abcdef", "--url"),
        ("ftp://example.org/x.pth", "0123456789abcdef", "--url"),
        ("http://127.0.0.1:9/x.pth", "zz", "--sha256"),
    ] {
        let o = fetch(url, sha, &dir);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(needle) && err.lines().count() == 1, "{err}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_deepdream"))
        .args(["models", "fetch", "vgg16", "--url", "http://x/y"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--sha256") && err.lines().count() == 1, "clap names the missing flag: {err}");
}
