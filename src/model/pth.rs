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
///
/// Read on a thread of its own with a large stack: candle's pickle objects are dropped (and
/// cloned) recursively, so a pickle nested a million levels deep needs a deep stack. A pickle
/// is at most [`MAX_PICKLE_BYTES`] long and each level of nesting takes at least one byte, so
/// [`PARSE_STACK`] bounds what any accepted file can need.
pub fn read_pth(path: &Path) -> Result<Vec<(String, Tensor)>> {
    std::thread::scope(|s| {
        let reader = std::thread::Builder::new()
            .name("checkpoint".into())
            .stack_size(PARSE_STACK)
            .spawn_scoped(s, || read_pth_here(path))
            .map_err(|e| Error::internal(format!("cannot start the checkpoint reader: {e}")))?;
        reader.join().unwrap_or_else(|_| Err(Error::internal("the checkpoint reader panicked")))
    })
}

fn read_pth_here(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let err = |reason: String| Error::Weights { path: path.to_owned(), reason };
    let size = std::fs::metadata(path).map_err(|e| err(e.to_string()))?.len();
    if size > MAX_CHECKPOINT_BYTES {
        return Err(err(format!("{size} bytes, larger than any network's checkpoint")));
    }
    let mut magic = Vec::with_capacity(4);
    std::fs::File::open(path).and_then(|f| f.take(4).read_to_end(&mut magic)).map_err(|e| err(e.to_string()))?;
    let tensors = if magic.starts_with(b"PK\x03\x04") {
        read_zip(path).map_err(|e| err(format!("not a readable PyTorch zip checkpoint: {e}")))?
    } else {
        read_legacy(&std::fs::read(path).map_err(|e| err(e.to_string()))?).map_err(err)?
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
    archive
        .by_name(&pkl)
        .map_err(|e| e.to_string())?
        .take(MAX_PICKLE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_PICKLE_BYTES {
        return Err(format!("{pkl} is larger than {} MiB", MAX_PICKLE_BYTES >> 20));
    }
    let root = read_pickle(&mut Cursor::new(&bytes))?;
    let dir = pkl.strip_suffix(".pkl").unwrap_or(&pkl).to_owned();
    let mut infos = Vec::new();
    collect_tensor_infos(root, "", Path::new(&dir), &mut infos);
    // How many bytes of each storage the tensors reach, checked before anything is read: the
    // archive's declared sizes and its compressed streams are not trusted to be small.
    let mut needed: HashMap<String, usize> = HashMap::new();
    for info in &infos {
        let reach = View::of(info).map_err(|e| format!("{}: {e}", info.name))?.reach * info.dtype.size_in_bytes();
        let n = needed.entry(info.path.clone()).or_default();
        *n = (*n).max(reach);
    }
    if needed.values().map(|&n| n as u64).sum::<u64>() > MAX_CHECKPOINT_BYTES {
        return Err(format!("its tensors need more than {} GiB, more than any network's", MAX_CHECKPOINT_BYTES >> 30));
    }
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(infos.len());
    for info in infos {
        if !storages.contains_key(&info.path) {
            let want = needed[&info.path];
            let entry = archive.by_name(&info.path).map_err(|e| format!("{}: {e}", info.path))?;
            let mut data = Vec::with_capacity(want);
            entry.take(want as u64).read_to_end(&mut data).map_err(|e| format!("{}: {e}", info.path))?;
            if data.len() < want {
                return Err(format!("{}: storage {} is truncated", info.name, info.path));
            }
            storages.insert(info.path.clone(), data);
        }
        let data = &storages[&info.path];
        out.push((info.name.clone(), tensor_in(data, &info)?));
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

/// What kind of pickle object `o` is, for messages: never the object itself, which a hostile
/// file can nest a million levels deep.
fn kind(o: &Object) -> &'static str {
    match o {
        Object::Class { .. } => "a class",
        Object::Int(_) | Object::Long(_) => "an integer",
        Object::Float(_) => "a float",
        Object::Unicode(_) => "a string",
        Object::Bool(_) => "a boolean",
        Object::None => "None",
        Object::Tuple(_) => "a tuple",
        Object::List(_) => "a list",
        Object::Mark => "a mark",
        Object::Dict(_) => "a dict",
        Object::Reduce { .. } => "a reduce call",
        Object::Build { .. } => "a build call",
        Object::PersistentLoad(_) => "a persistent id",
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

/// The pickle at `r`'s position (at most [`MAX_PICKLE_BYTES`] long); `r` moves past it.
fn read_pickle(r: &mut Cursor<&[u8]>) -> std::result::Result<Object, String> {
    let (all, start) = (*r.get_ref(), r.position() as usize);
    let end = start.saturating_add(MAX_PICKLE_BYTES as usize).min(all.len());
    let mut window = Cursor::new(all.get(start..end).unwrap_or(&[]));
    let mut stack = Stack::empty();
    let read = stack.read_loop(&mut window);
    let at = start + window.position() as usize;
    read.map_err(|e| match end < all.len() && at >= end {
        true => format!("a pickle longer than {} MiB, more than any checkpoint's", MAX_PICKLE_BYTES >> 20),
        false => format!("bad pickle at byte {at}: {}", first_line(&e.to_string())),
    })?;
    r.set_position(at as u64);
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
        other => return Err(format!("expected the list of storage keys, found {}", kind(&other))),
    };
    let elem_sizes = storage_elem_sizes(&state);
    // Each storage: u64 element count, then the elements.
    let mut storages: HashMap<String, (usize, usize)> = HashMap::new();
    for key in keys {
        let key = key.unicode().map_err(|o| format!("bad storage key: {}", kind(&o)))?;
        let mut count = [0u8; 8];
        r.read_exact(&mut count).map_err(|_| "truncated storage header".to_string())?;
        let elem = *elem_sizes.get(&key).ok_or_else(|| format!("storage {key} is not used by any tensor"))?;
        let len = u64::from_le_bytes(count)
            .checked_mul(elem as u64)
            .filter(|&len| len <= (bytes.len() as u64).saturating_sub(r.position()))
            .ok_or_else(|| format!("storage {key} is truncated"))?;
        storages.insert(key, (r.position() as usize, len as usize));
        r.set_position(r.position() + len);
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
    let &(start, len) = storages.get(key).ok_or_else(|| format!("{}: storage {key} is missing", info.name))?;
    tensor_in(&bytes[start..start + len], info)
}

/// The largest tensor a checkpoint may declare, in elements (the largest weight in the zoo,
/// VGG-16's first classifier layer, has 103 million).
const MAX_ELEMENTS: usize = 1 << 28;
/// The most storage bytes read from one checkpoint (VGG-16's, the largest in the zoo, holds
/// 528 MiB); a legacy checkpoint is read whole, so this caps its file size too.
const MAX_CHECKPOINT_BYTES: u64 = 2 << 30;
/// A view may hold more elements than its storage (zero or overlapping strides, as from
/// `expand`) only up to this many.
const MAX_OVERLAPPING_ELEMENTS: usize = 1 << 24;
/// The longest pickle read (a state dict's is tens of KiB).
const MAX_PICKLE_BYTES: u64 = 4 << 20;
/// The checkpoint reader's stack: room for 4 Mi levels of nesting at up to 256 bytes each.
const PARSE_STACK: usize = 1 << 30;

/// A tensor's shape, strides and offset, checked against overflow before anything is allocated.
struct View {
    dims: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
    numel: usize,
    /// One past the last storage element the view reads (0 when it is empty).
    reach: usize,
}

impl View {
    fn of(info: &TensorInfo) -> std::result::Result<View, String> {
        let (dims, strides) = (info.layout.dims().to_vec(), info.layout.stride().to_vec());
        if dims.len() != strides.len() {
            return Err(format!("{} sizes but {} strides", dims.len(), strides.len()));
        }
        let offset = info.layout.start_offset() / info.dtype.size_in_bytes();
        let too_big = || format!("declares a tensor of shape {dims:?}, larger than any network's weights");
        let numel = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).filter(|&n| n <= MAX_ELEMENTS);
        let numel = numel.ok_or_else(too_big)?;
        let reach = match numel {
            0 => 0,
            _ => dims
                .iter()
                .zip(&strides)
                .try_fold(offset, |r, (&d, &s)| r.checked_add((d - 1).checked_mul(s)?))
                .and_then(|last| last.checked_add(1))
                .ok_or_else(too_big)?,
        };
        if reach > u32::MAX as usize {
            return Err(too_big());
        }
        if numel > reach.max(MAX_OVERLAPPING_ELEMENTS) {
            return Err(format!("declares {numel} elements over a storage of {reach}"));
        }
        Ok(View { dims, strides, offset, numel, reach })
    }

    fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.dims.iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }
}

/// The tensor that `info`'s shape, strides and offset describe inside the storage `data`.
fn tensor_in(data: &[u8], info: &TensorInfo) -> std::result::Result<Tensor, String> {
    let fail = |e: String| format!("{}: {e}", info.name);
    let view = View::of(info).map_err(fail)?;
    let elem = info.dtype.size_in_bytes();
    let count = data.len() / elem;
    if view.reach > count {
        return Err(fail(format!("strides reach element {} of a storage of {count}", view.reach - 1)));
    }
    let storage = Tensor::from_raw_buffer(&data[..count * elem], info.dtype, &[count], &Device::Cpu)
        .map_err(|e| fail(first_line(&e.to_string())))?;
    strided_view(&storage, &view).map_err(|e| fail(first_line(&e.to_string())))
}

/// The view's elements in row-major order: a slice when it is contiguous, a gather otherwise.
fn strided_view(storage: &Tensor, view: &View) -> candle_core::Result<Tensor> {
    let dims = view.dims.clone();
    if view.numel == 0 {
        return Tensor::zeros(dims, storage.dtype(), storage.device());
    }
    if view.is_contiguous() {
        return storage.narrow(0, view.offset, view.numel)?.reshape(dims);
    }
    let mut index = Vec::with_capacity(view.numel);
    let mut pos = vec![0usize; dims.len()];
    for _ in 0..view.numel {
        index.push((view.offset + pos.iter().zip(&view.strides).map(|(p, s)| p * s).sum::<usize>()) as u32);
        for d in (0..dims.len()).rev() {
            pos[d] += 1;
            if pos[d] < dims[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    let index = Tensor::from_vec(index, view.numel, storage.device())?;
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

    #[test]
    fn a_deeply_nested_pickle_is_an_error_not_a_stack_overflow() {
        let dir = std::env::temp_dir().join(format!("dd-pth-deep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A legacy checkpoint whose state dict is a 1-tuple nested a million levels deep.
        let mut bytes = vec![0x80, 0x02, 0x8a, 0x0a];
        bytes.extend(LEGACY_MAGIC_BYTES);
        bytes.push(b'.');
        bytes.extend(b"\x80\x02M\xe9\x03."); // protocol version 1001
        bytes.extend(b"\x80\x02}."); // system info
        bytes.extend(b"\x80\x02)");
        bytes.extend(std::iter::repeat_n(0x85u8, 1_000_000)); // TUPLE1
        bytes.push(b'.');
        bytes.extend(b"\x80\x02]."); // storage keys
        let deep = dir.join("deep.pth");
        std::fs::write(&deep, &bytes).unwrap();
        let err = read_pth(&deep).unwrap_err().to_string();
        assert!(err.contains("no state dict"), "{err}");
        // Longer than any real pickle: refused before it is parsed to the end.
        let huge: Vec<u8> = [&bytes[..28], &vec![0x85u8; 5 << 20][..], b"."].concat();
        std::fs::write(&deep, &huge).unwrap();
        let err = read_pth(&deep).unwrap_err().to_string();
        assert!(err.contains("a pickle longer than 4 MiB"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `tiny_legacy.pth` with conv.weight's shape and strides replaced (pickled as BININT1s).
    fn legacy_with_conv_view(size: &[u8], stride: &[u8]) -> Vec<u8> {
        let full = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_legacy.pth")).unwrap();
        let replace = |bytes: Vec<u8>, from: &[u8], to: &[u8]| {
            let at = bytes.windows(from.len()).position(|w| w == from).expect("pattern in the fixture");
            [&bytes[..at], to, &bytes[at + from.len()..]].concat()
        };
        let bytes = replace(full, b"(K\x02K\x03K\x02K\x02t", size);
        replace(bytes, b"(K\x0cK\x04K\x02K\x01t", stride)
    }

    #[test]
    fn a_huge_declared_shape_is_refused_before_allocating() {
        let dir = std::env::temp_dir().join(format!("dd-pth-bomb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bomb = dir.join("bomb.pth");
        // 2^30 x 3 x 2 x 2 elements (48 GiB as f32) on stride 0 over a 24-element storage: the
        // old reader built a 12-billion-entry index before looking at the strides.
        std::fs::write(&bomb, legacy_with_conv_view(b"(J\x00\x00\x00\x40K\x03K\x02K\x02t", b"(K\x00K\x04K\x02K\x01t"))
            .unwrap();
        let err = read_pth(&bomb).unwrap_err().to_string();
        assert!(err.contains("conv.weight") && err.contains("larger than any network"), "{err}");
        // 2^22 x 3 x 2 x 2 on stride 0: under the element cap, but 50 million elements over 12.
        std::fs::write(&bomb, legacy_with_conv_view(b"(J\x00\x00\x40\x00K\x03K\x02K\x02t", b"(K\x00K\x04K\x02K\x01t"))
            .unwrap();
        let err = read_pth(&bomb).unwrap_err().to_string();
        assert!(err.contains("50331648 elements over a storage of 12"), "{err}");
        // Strides that reach past the storage: element 12*3+... of 24.
        std::fs::write(&bomb, legacy_with_conv_view(b"(K\x02K\x03K\x02K\x02t", b"(K\x30K\x04K\x02K\x01t")).unwrap();
        let err = read_pth(&bomb).unwrap_err().to_string();
        assert!(err.contains("reach element 59 of a storage of 24"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Replaces an archive entry's bytes (by entry name) where it returns `Some`.
    type Rewrite = dyn Fn(&str, &[u8]) -> Option<Vec<u8>>;

    #[test]
    fn zip_storages_are_read_only_as_far_as_the_tensors_reach() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("dd-pth-zip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_zip.pth");
        let mut archive = zip::ZipArchive::new(std::fs::File::open(&source).unwrap()).unwrap();
        let mut write = |name: &str, storage: &Rewrite| {
            let path = dir.join(name);
            let mut out = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
            for i in 0..archive.len() {
                let mut entry = archive.by_index(i).unwrap();
                let entry_name = entry.name().unwrap().into_owned();
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                let bytes = storage(&entry_name, &bytes).unwrap_or(bytes);
                let options = zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Deflated)
                    .large_file(bytes.len() > u32::MAX as usize);
                out.start_file(entry_name, options).unwrap();
                out.write_all(&bytes).unwrap();
            }
            out.finish().unwrap();
            path
        };
        // conv.weight's storage followed by 256 MiB of zeros, deflated to a few hundred KiB.
        let padded = write("padded.pth", &|name, bytes| {
            name.ends_with("data/0").then(|| [bytes, &vec![0u8; 256 << 20]].concat())
        });
        let t: HashMap<String, Tensor> = read_pth(&padded).unwrap().into_iter().collect();
        assert_eq!(
            t["conv.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            (0..24).map(|i| i as f32 / 8.0).collect::<Vec<_>>()
        );
        // conv.weight's storage cut short.
        let cut = write("cut.pth", &|name, bytes| name.ends_with("data/0").then(|| bytes[..40].to_vec()));
        let err = read_pth(&cut).unwrap_err().to_string();
        assert!(err.contains("conv.weight: storage") && err.contains("truncated"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
