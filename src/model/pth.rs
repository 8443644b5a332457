//! Reads PyTorch checkpoints: the zip archive of torch >= 1.6 and the legacy (pre-1.6) stream.
//!
//! The legacy stream is five pickles back to back — magic number, protocol version, system
//! info, the state dict (storages as persistent ids), the list of storage keys — followed by
//! each storage's raw bytes, preceded by its element count as a little-endian u64. Candle reads
//! only the zip form, so the legacy one is decoded here with candle's pickle machine.

use crate::{Error, Result};
use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

/// The magic number 0x1950a86a20f9469cfc6c that opens a legacy checkpoint, little-endian.
const LEGACY_MAGIC_BYTES: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// All floating-point tensors of a `.pth` state dict, as f32, by name. Integer buffers such as
/// `num_batches_tracked` are left out.
pub fn read_pth(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let err = |reason: String| Error::Weights { path: path.to_owned(), reason };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let tensors = if bytes.starts_with(b"PK\x03\x04") {
        read_zip(path).map_err(|e| err(format!("not a readable PyTorch zip checkpoint: {e}")))?
    } else {
        read_legacy(&bytes).map_err(err)?
    };
    let mut out = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if t.dtype().is_float() {
            out.push((name, t.to_dtype(DType::F32)?));
        }
    }
    if out.is_empty() {
        return Err(err("holds no floating-point tensors".into()));
    }
    Ok(out)
}

/// The zip form: candle reads the pickle, the storages are read here (candle's own reader
/// refuses non-contiguous tensors such as a saved transpose).
/// TorchScript archives are read the same way: their `data.pkl` is a tree of module objects
/// whose attributes hold the tensors, named here by their attribute path (`net.layers.conv.weight`).
fn read_zip(path: &Path) -> std::result::Result<Vec<(String, Tensor)>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| e.to_string())?;
    let pkl = archive
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .find(|n| n.ends_with("/data.pkl") || n == "data.pkl")
        .ok_or("no data.pkl in the archive")?;
    let mut bytes = Vec::new();
    archive.by_name(&pkl).map_err(|e| e.to_string())?.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    let root = read_pickle(&mut Cursor::new(&bytes))?;
    let dir = pkl.strip_suffix(".pkl").unwrap_or(&pkl).to_owned();
    let mut infos = Vec::new();
    collect_tensor_infos(root, "", Path::new(&dir), &mut infos);
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(infos.len());
    for info in infos {
        if !storages.contains_key(&info.path) {
            let mut entry = archive.by_name(&info.path).map_err(|e| format!("{}: {e}", info.path))?;
            let mut data = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut data).map_err(|e| format!("{}: {e}", info.path))?;
            storages.insert(info.path.clone(), data);
        }
        let data = &storages[&info.path];
        let storage =
            Tensor::from_raw_buffer(data, info.dtype, &[data.len() / info.dtype.size_in_bytes()], &Device::Cpu)
                .map_err(|e| first_line(&e.to_string()))?;
        out.push((
            info.name.clone(),
            strided_view(&storage, &info).map_err(|e| format!("{}: {}", info.name, first_line(&e.to_string())))?,
        ));
    }
    Ok(out)
}

/// Every tensor reachable from `obj` through dicts and module attributes, named by its path.
fn collect_tensor_infos(obj: Object, prefix: &str, dir: &Path, out: &mut Vec<TensorInfo>) {
    match obj {
        Object::Build { args, .. } => collect_tensor_infos(*args, prefix, dir, out),
        Object::Dict(entries) => {
            for (key, value) in entries {
                let Object::Unicode(key) = key else { continue };
                let name = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
                match value.clone().into_tensor_info(Object::Unicode(name.clone()), dir) {
                    Ok(Some(info)) => out.push(info),
                    _ => collect_tensor_infos(value, &name, dir, out),
                }
            }
        }
        _ => {}
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

fn read_pickle(r: &mut Cursor<&[u8]>) -> std::result::Result<Object, String> {
    let mut stack = Stack::empty();
    stack.read_loop(r).map_err(|e| format!("bad pickle at byte {}: {}", r.position(), first_line(&e.to_string())))?;
    stack.finalize().map_err(|e| first_line(&e.to_string()))
}

fn read_legacy(bytes: &[u8]) -> std::result::Result<Vec<(String, Tensor)>, String> {
    // The magic number is a pickled 80-bit int (PROTO 2, LONG1 of 10 bytes, STOP), too wide for
    // candle's pickle machine: check its 15 bytes here and start after them.
    if bytes.len() < 15
        || bytes[..4] != [0x80, 0x02, 0x8a, 0x0a]
        || bytes[4..14] != LEGACY_MAGIC_BYTES
        || bytes[14] != b'.'
    {
        return Err("not a PyTorch checkpoint (neither a zip archive nor a legacy .pth)".into());
    }
    let mut r = Cursor::new(bytes);
    r.set_position(15);
    for _ in 0..2 {
        read_pickle(&mut r)?; // protocol version, system info
    }
    let state = read_pickle(&mut r)?;
    let keys = match read_pickle(&mut r)? {
        Object::List(keys) | Object::Tuple(keys) => keys,
        other => return Err(format!("expected the list of storage keys, found {other:?}")),
    };
    let elem_sizes = storage_elem_sizes(&state);
    // Each storage: u64 element count, then the elements.
    let mut storages: HashMap<String, (usize, usize)> = HashMap::new();
    for key in keys {
        let key = key.unicode().map_err(|o| format!("bad storage key {o:?}"))?;
        let mut count = [0u8; 8];
        r.read_exact(&mut count).map_err(|_| "truncated storage header".to_string())?;
        let count = u64::from_le_bytes(count) as usize;
        let elem = *elem_sizes.get(&key).ok_or_else(|| format!("storage {key} is not used by any tensor"))?;
        storages.insert(key, (r.position() as usize, count));
        r.set_position(r.position() + (count * elem) as u64);
    }
    let entries = match state {
        Object::Dict(entries) => entries,
        Object::Build { args, .. } => match *args {
            Object::Dict(entries) => entries,
            _ => return Err("the checkpoint holds no state dict".into()),
        },
        _ => return Err("the checkpoint holds no state dict".into()),
    };
    let mut out = Vec::new();
    for (name, value) in entries {
        let info = match value.into_tensor_info(name, Path::new("")) {
            Ok(Some(info)) => info,
            _ => continue,
        };
        out.push((info.name.clone(), legacy_tensor(bytes, &info, &storages)?));
    }
    Ok(out)
}

/// Element size of every storage the state dict refers to, by storage key.
fn storage_elem_sizes(state: &Object) -> HashMap<String, usize> {
    fn walk(o: &Object, out: &mut HashMap<String, usize>) {
        match o {
            Object::PersistentLoad(inner) => {
                // ('storage', torch.FloatStorage, key, location, size, view_metadata)
                if let Object::Tuple(items) = &**inner
                    && let (Some(Object::Class { class_name, .. }), Some(Object::Unicode(key))) =
                        (items.get(1), items.get(2))
                {
                    let size = match class_name.as_str() {
                        "DoubleStorage" | "LongStorage" => 8,
                        "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
                        "ByteStorage" | "CharStorage" | "BoolStorage" => 1,
                        _ => 4,
                    };
                    out.insert(key.clone(), size);
                }
            }
            Object::Tuple(v) | Object::List(v) => v.iter().for_each(|o| walk(o, out)),
            Object::Dict(kv) => kv.iter().for_each(|(a, b)| {
                walk(a, out);
                walk(b, out)
            }),
            Object::Reduce { callable, args } | Object::Build { callable, args } => {
                walk(callable, out);
                walk(args, out)
            }
            _ => {}
        }
    }
    let mut out = HashMap::new();
    walk(state, &mut out);
    out
}

fn legacy_tensor(
    bytes: &[u8],
    info: &TensorInfo,
    storages: &HashMap<String, (usize, usize)>,
) -> std::result::Result<Tensor, String> {
    let key = info.path.rsplit('/').next().unwrap_or(&info.path);
    let &(start, count) = storages.get(key).ok_or_else(|| format!("{}: storage {key} is missing", info.name))?;
    let elem = info.dtype.size_in_bytes();
    let data =
        bytes.get(start..start + count * elem).ok_or_else(|| format!("{}: storage {key} is truncated", info.name))?;
    let storage =
        Tensor::from_raw_buffer(data, info.dtype, &[count], &Device::Cpu).map_err(|e| first_line(&e.to_string()))?;
    strided_view(&storage, info).map_err(|e| format!("{}: {}", info.name, first_line(&e.to_string())))
}

/// The tensor that `info`'s shape, strides and offset describe inside a flat storage.
fn strided_view(storage: &Tensor, info: &TensorInfo) -> candle_core::Result<Tensor> {
    let dims = info.layout.dims().to_vec();
    let strides = info.layout.stride().to_vec();
    let offset = info.layout.start_offset() / info.dtype.size_in_bytes();
    let numel: usize = dims.iter().product();
    let mut index = Vec::with_capacity(numel);
    let mut pos = vec![0usize; dims.len()];
    for _ in 0..numel {
        index.push((offset + pos.iter().zip(&strides).map(|(p, s)| p * s).sum::<usize>()) as u32);
        for d in (0..dims.len()).rev() {
            pos[d] += 1;
            if pos[d] < dims[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    if index.iter().any(|&i| i as usize >= storage.elem_count()) {
        candle_core::bail!("strides reach outside the storage");
    }
    let index = Tensor::from_vec(index, numel, storage.device())?;
    storage.index_select(&index, 0)?.reshape(dims)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixtures hold the same state dict, saved by torch 2.15 in both formats:
    /// contiguous, transposed, f64, f16, an int buffer, an offset view and a strided view.
    fn check(file: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(file);
        let t: HashMap<String, Tensor> = read_pth(&path).unwrap().into_iter().collect();
        let v = |k: &str| t[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(t["conv.weight"].dims(), &[2, 3, 2, 2]);
        assert_eq!(v("conv.weight"), (0..24).map(|i| i as f32 / 8.0).collect::<Vec<_>>());
        // (arange(6).reshape(2, 3) - 2.5).t()
        assert_eq!(t["fc.weight"].dims(), &[3, 2]);
        assert_eq!(v("fc.weight"), vec![-2.5, 0.5, -1.5, 1.5, -0.5, 2.5]);
        assert_eq!(v("bn.running_var"), vec![0.5, 2.0]);
        assert_eq!(v("half"), vec![1.5, -2.25]);
        assert_eq!(v("view"), vec![3.0, 4.0, 5.0, 6.0]);
        assert_eq!(v("view2"), vec![0.0, 2.0, 4.0, 6.0, 8.0]);
        assert!(!t.contains_key("bn.num_batches_tracked"), "integer buffers are dropped");
    }

    #[test]
    fn reads_legacy_checkpoint() {
        check("tiny_legacy.pth");
    }

    #[test]
    fn reads_zip_checkpoint() {
        check("tiny_zip.pth");
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        let dir = std::env::temp_dir().join(format!("dd-pth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pth");
        std::fs::write(&garbage, b"hello, not a checkpoint").unwrap();
        assert!(read_pth(&garbage).unwrap_err().to_string().contains("not a PyTorch checkpoint"));
        let full = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_legacy.pth")).unwrap();
        let cut = dir.join("cut.pth");
        std::fs::write(&cut, &full[..full.len() - 20]).unwrap();
        assert!(read_pth(&cut).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
