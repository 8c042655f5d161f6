//! Checkpoints as safetensors files that PyTorch reads: model parameters under their
//! PyTorch names, optimizer state under `optimizer.<param>.<slot>`, and step, epoch,
//! seed and config in the metadata. Written to a temporary file and renamed, so an
//! interrupted write never replaces a good checkpoint.
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_core::{Executor, Graph, HostData, HostTensor, Shape, Tensor};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use crate::config::Config;
use crate::TrainError;

/// Metadata `format` of a checkpoint written by `kiln train`.
pub const FORMAT: &str = "kiln-checkpoint-1";

/// Prefix of optimizer-state tensors, so that a PyTorch user can keep only the model's:
/// `{k: v for k, v in load_file(f).items() if not k.startswith("optimizer.")}`.
pub const OPTIMIZER_PREFIX: &str = "optimizer.";

/// A checkpoint in memory: named tensors and string metadata, as a safetensors file
/// holds them.
///
/// ```
/// use kiln_core::HostTensor;
/// use kiln_train::Checkpoint;
///
/// let dir = tempfile::tempdir()?;
/// let file = dir.path().join("model.safetensors");
/// let mut ck = Checkpoint::new();
/// ck.insert("0.weight", HostTensor::f32([2, 2], vec![1.0, 2.0, 3.0, 4.0]));
/// ck.set_meta("step", 100);
/// ck.save(&file)?; // atomically: a temporary file, then a rename
/// let back = Checkpoint::load(&file)?;
/// assert_eq!(back.meta_u64("step", &file)?, 100);
/// assert_eq!(back.tensors["0.weight"].to_f32_vec(), vec![1.0, 2.0, 3.0, 4.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoint {
    /// Tensors by name: model parameters and buffers under PyTorch's names, optimizer
    /// state under [`OPTIMIZER_PREFIX`]. Saved as f32 or u32; the f64 CPU reference
    /// backend's tensors as f64 (a reference run's state is kept exactly, as `torch.save`
    /// keeps a double model's), which every backend reads back.
    pub tensors: BTreeMap<String, HostTensor>,
    /// The safetensors header's `__metadata__`: `format`, `step`, `seed`, `config`, ...
    pub metadata: BTreeMap<String, String>,
}

impl Checkpoint {
    /// An empty checkpoint, to fill with [`Checkpoint::insert`] and
    /// [`Checkpoint::set_meta`].
    pub fn new() -> Self {
        Checkpoint::default()
    }

    /// Add or replace the tensor `name`.
    pub fn insert(&mut self, name: impl Into<String>, value: HostTensor) {
        self.tensors.insert(name.into(), value);
    }

    /// Set a metadata entry; numbers are stored as their decimal text.
    pub fn set_meta(&mut self, key: &str, value: impl ToString) {
        self.metadata.insert(key.to_string(), value.to_string());
    }

    /// A metadata value parsed as a number, with an error naming the file when absent or bad.
    pub fn meta_u64(&self, key: &str, file: &Path) -> Result<u64, TrainError> {
        self.meta_parsed(key, file, "a whole number")
    }

    /// [`Checkpoint::meta_u64`] of a key that older checkpoints lack: `default` when absent,
    /// an error naming the file when present but not a whole number.
    pub fn meta_u64_or(&self, key: &str, default: u64, file: &Path) -> Result<u64, TrainError> {
        if self.metadata.contains_key(key) {
            self.meta_u64(key, file)
        } else {
            Ok(default)
        }
    }

    /// The metadata every training checkpoint carries: format, seed and the whole config
    /// (so that `--resume` and `kiln eval` need nothing else).
    pub fn set_run_meta(&mut self, config: &Config) {
        self.set_meta("format", FORMAT);
        self.set_meta("seed", config.train.seed);
        self.set_meta("config", config.to_toml());
    }

    /// A metadata value parsed as a float (a loss), with an error naming the file.
    pub fn meta_f64(&self, key: &str, file: &Path) -> Result<f64, TrainError> {
        self.meta_parsed(key, file, "a number")
    }

    /// A metadata value parsed as `T`; errors name the file, the key and what `T` is.
    fn meta_parsed<T: std::str::FromStr>(&self, key: &str, file: &Path, what: &str) -> Result<T, TrainError> {
        let error = |message: String| TrainError::Checkpoint { file: file.to_path_buf(), message };
        let raw = self.metadata.get(key).ok_or_else(|| error(format!("metadata has no '{key}'")))?;
        raw.parse().map_err(|_| error(format!("metadata '{key}' = '{raw}' is not {what}")))
    }

    /// The model's tensors only: without the optimizer state.
    pub fn model_only(&self) -> Checkpoint {
        Checkpoint {
            tensors: self.tensors.iter().filter(|(n, _)| !n.starts_with(OPTIMIZER_PREFIX)).map(|(n, t)| (n.clone(), t.clone())).collect(),
            metadata: self.metadata.clone(),
        }
    }

    /// Read the current value of every named state tensor from an executor.
    pub fn read_from(exec: &mut dyn Executor, named: &[(String, Tensor)]) -> Result<Checkpoint, TrainError> {
        let mut ck = Checkpoint::new();
        for (name, t) in named {
            ck.insert(name.clone(), exec.read_state(*t)?);
        }
        Ok(ck)
    }

    /// Write this checkpoint's tensors into an executor's state, after checking that it
    /// holds exactly the named tensors of `graph` with their shapes.
    pub fn write_to(&self, exec: &mut dyn Executor, graph: &Graph, named: &[(String, Tensor)], file: &Path) -> Result<(), TrainError> {
        let expected: Vec<(String, Shape)> = named.iter().map(|(n, t)| (n.clone(), graph.shape(*t).clone())).collect();
        self.check_matches(&expected, file)?;
        for (name, t) in named {
            exec.write_state(*t, &self.tensors[name])?;
        }
        Ok(())
    }

    /// Write the tensor `name` (which [`Checkpoint::check_matches`] has found) into the
    /// executor's state `state`.
    pub(crate) fn write_tensor(&self, exec: &mut dyn Executor, name: &str, state: Tensor) -> Result<(), TrainError> {
        let value = self.tensors.get(name).ok_or_else(|| TrainError::Config(format!("the checkpoint has no tensor '{name}'")))?;
        exec.write_state(state, value)?;
        Ok(())
    }

    /// What makes these tensors no good to train from or evaluate: every float tensor
    /// holding NaN or an infinity (with how many of its values), and every Adam
    /// second moment (`...exp_avg_sq`) with a negative value, whose square root is NaN.
    /// Empty when all is well.
    pub fn invalid_tensors(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, t) in &self.tensors {
            let values: Box<dyn Iterator<Item = f64>> = match &t.data {
                HostData::F32(v) => Box::new(v.iter().map(|&x| x as f64)),
                HostData::F64(v) => Box::new(v.iter().copied()),
                HostData::U32(_) => continue,
            };
            let (mut non_finite, mut negative) = (0usize, 0usize);
            for x in values {
                non_finite += usize::from(!x.is_finite());
                negative += usize::from(x < 0.0);
            }
            if non_finite > 0 {
                problems.push(format!("'{name}' has {non_finite} of {} values NaN or infinite", t.len()));
            } else if negative > 0 && name.starts_with(OPTIMIZER_PREFIX) && name.ends_with(SECOND_MOMENT_SLOT) {
                problems.push(format!("'{name}' (a second moment, never negative) has {negative} of {} values below 0", t.len()));
            }
        }
        problems
    }

    /// Write atomically: a temporary file beside `path`, flushed, then renamed over it.
    /// Refuses tensors that [`Checkpoint::invalid_tensors`] finds (NaN or infinite
    /// weights are never saved as a good checkpoint): the file at `path` stays as it was.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let err = |message: String| TrainError::Checkpoint { file: path.to_path_buf(), message };
        let invalid = self.invalid_tensors();
        if !invalid.is_empty() {
            return Err(TrainError::Diverged(format!(
                "refusing to write {}: {}; {}",
                path.display(),
                list_problems(&invalid),
                if path.exists() { "the previous checkpoint there is kept unchanged" } else { "no checkpoint had been written there yet" }
            )));
        }
        let mut bytes_by_name: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, t) in &self.tensors {
            let mut dims = t.shape.dims().to_vec();
            let (dtype, bytes) = match &t.data {
                HostData::F32(v) => (Dtype::F32, bytemuck_f32(v)),
                HostData::F64(v) => (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                // Packed int8 is written as what it is: I8, four columns per word.
                HostData::U32(v) if name.ends_with(INT8_SUFFIX) && !dims.is_empty() => {
                    if let Some(last) = dims.last_mut() {
                        *last *= 4;
                    }
                    (Dtype::I8, v.iter().flat_map(|w| w.to_le_bytes()).collect())
                }
                HostData::U32(v) => (Dtype::U32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            };
            bytes_by_name.push((name.clone(), dtype, dims, bytes));
        }
        let views: Vec<(String, TensorView)> = bytes_by_name
            .iter()
            .map(|(n, d, s, b)| TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v)))
            .collect::<Result<_, _>>()
            .map_err(|e| err(format!("cannot encode tensor: {e}")))?;
        let metadata: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| err(format!("cannot encode: {e}")))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create folder {}: {e}", dir.display())))?;
        }
        let tmp = temp_path(path);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(format!("cannot write: {e}"))
        })
    }

    /// Read a safetensors file (kiln's, or PyTorch's with F32, F64, F16 or U32 tensors;
    /// F16 is widened to f32). Refused: tensors [`Checkpoint::invalid_tensors`] objects
    /// to, and a file over half the memory this machine can give (it is read whole).
    pub fn load(path: &Path) -> Result<Checkpoint, TrainError> {
        let bytes = read_safetensors_bytes(path)?;
        Checkpoint::from_bytes(&bytes, path)
    }

    /// Parses the bytes of a safetensors file already in memory; `file` is only the name
    /// its errors give (the checkpoint fuzz target starts here).
    pub fn from_bytes(bytes: &[u8], file: &Path) -> Result<Checkpoint, TrainError> {
        let err = |message: String| TrainError::Checkpoint { file: file.to_path_buf(), message };
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| err(format!("not a safetensors file: {e}")))?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| err(format!("not a safetensors file: {e}")))?;
        let mut ck = Checkpoint::new();
        if let Some(m) = meta.metadata() {
            ck.metadata = m.clone().into_iter().collect();
        }
        for (name, view) in st.tensors() {
            let t = host_tensor(&name, &view).map_err(err)?;
            ck.tensors.insert(name, t);
        }
        let invalid = ck.invalid_tensors();
        if !invalid.is_empty() {
            return Err(err(format!("cannot be trained from or evaluated: {}", list_problems(&invalid))));
        }
        // Tables `kiln quantize --embeddings` stored as int8 are computed f32.
        crate::quantize::dequantize_stored_tables(&mut ck, file)?;
        Ok(ck)
    }

    /// Check that this checkpoint holds exactly the expected tensors with the expected
    /// shapes; the error lists every missing, unexpected and mis-shaped tensor.
    pub fn check_matches(&self, expected: &[(String, Shape)], file: &Path) -> Result<(), TrainError> {
        let mut problems = Vec::new();
        for (name, shape) in expected {
            match self.tensors.get(name) {
                None => problems.push(format!("missing '{name}' {shape}")),
                Some(t) if &t.shape != shape => {
                    problems.push(format!("'{name}' is {} in the file, the model needs {shape}", t.shape))
                }
                Some(_) => {}
            }
        }
        for name in self.tensors.keys() {
            if !expected.iter().any(|(n, _)| n == name) {
                problems.push(format!("unexpected '{name}' {}", self.tensors[name].shape));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TrainError::Checkpoint {
                file: file.to_path_buf(),
                message: format!("does not match this model:\n  {}", problems.join("\n  ")),
            })
        }
    }
}

/// A safetensors tensor as a host tensor: F32, U32 and F64 as they are, F16 widened to f32.
pub(crate) fn host_tensor(name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<HostTensor, String> {
    let shape = Shape::new(view.shape().to_vec());
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => HostTensor::f32(shape, data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        Dtype::U32 => HostTensor::u32(shape, data.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        Dtype::F64 => HostTensor::f64(
            shape,
            data.chunks_exact(8).map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect(),
        ),
        Dtype::F16 => {
            HostTensor::f32(shape, data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect())
        }
        Dtype::I8 => {
            let mut dims = view.shape().to_vec();
            match dims.last_mut() {
                Some(columns) if *columns % 4 == 0 && name.ends_with(INT8_SUFFIX) => *columns /= 4,
                _ => return Err(format!("tensor '{name}' is int8 {dims:?}: kiln reads int8 weights named '*{INT8_SUFFIX}' with a multiple of 4 columns")),
            }
            HostTensor::u32(dims, data.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        }
        other => return Err(format!("tensor '{name}' has dtype {other:?}; kiln reads F32, F64, F16, U32 and I8")),
    })
}

/// The name ending of an int8 tensor (a quantized layer's weight): I8 in the file, held in
/// memory packed four to a u32 along its last axis (see `kiln_core::int8`), which is why
/// its columns are a multiple of 4 (a quantizer pads each row with zeros).
pub const INT8_SUFFIX: &str = ".int8";

/// The slot name of Adam's second moment (`optimizer.<param>.exp_avg_sq`), as PyTorch names it.
const SECOND_MOMENT_SLOT: &str = ".exp_avg_sq";

/// At most a few problems, then how many more: a corrupt file must not print a page.
fn list_problems(problems: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = problems.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if problems.len() > SHOWN {
        text.push_str(&format!(" and {} more tensors", problems.len() - SHOWN));
    }
    text
}

fn bytemuck_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// What [`Checkpoint::save`] names its temporary file: `<file>.tmp-<pid>`.
const TEMP_MARK: &str = ".tmp-";

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!("{TEMP_MARK}{}", std::process::id()));
    path.with_file_name(name)
}

/// Removes the temporary files that writers killed mid-write (kill -9, a power cut) left
/// in `dir` (`checkpoint.safetensors.tmp-<pid>`, tens of MB each): those of processes
/// that no longer run. A live process's temporary is its write in progress and stays.
/// Where process ids cannot be checked (no /proc), nothing is removed. Returns what went.
pub fn remove_stale_temporaries(dir: &Path) -> Vec<PathBuf> {
    let proc_root = Path::new("/proc");
    if !proc_root.join("self").exists() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((_, pid)) = name.rsplit_once(TEMP_MARK) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && !proc_root.join(pid.to_string()).exists() && std::fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

/// The config a checkpoint was trained with (from its metadata).
pub fn checkpoint_config(ck: &Checkpoint, file: &Path) -> Result<Config, TrainError> {
    let text = ck.metadata.get("config").ok_or_else(|| TrainError::Checkpoint {
        file: file.to_path_buf(),
        message: "metadata holds no 'config'; was it written by kiln train?".into(),
    })?;
    Config::from_toml(text, file)
}

/// The bytes of a safetensors file (a checkpoint, a pretrained model), read whole after
/// checking that it is a regular file that fits twice in the memory this machine can give
/// (its tensors are copied once).
pub(crate) fn read_safetensors_bytes(path: &Path) -> Result<Vec<u8>, TrainError> {
    let error = |message: String| TrainError::Checkpoint { file: path.to_path_buf(), message };
    kiln_data::require_regular_file(path).map_err(|e| error(e.to_string()))?;
    let length = std::fs::metadata(path).map(|m| m.len() as u128).unwrap_or(0);
    let budget = crate::limits::host_memory_budget() / 2;
    if length > budget {
        return Err(error(format!(
            "is {}, more than the {} this machine can give to reading it",
            crate::limits::bytes_text(length),
            crate::limits::bytes_text(budget)
        )));
    }
    std::fs::read(path).map_err(|e| error(format!("cannot read: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_mismatch_listing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ck.safetensors");
        let mut ck = Checkpoint::new();
        ck.insert("0.weight", HostTensor::f32([2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, -6.5]));
        ck.insert("0.bias", HostTensor::f32([2], vec![0.5, 0.25]));
        ck.set_meta("step", 42);
        ck.save(&path).expect("save");
        let back = Checkpoint::load(&path).expect("load");
        assert_eq!(back, ck);
        assert_eq!(back.meta_u64("step", &path).expect("step"), 42);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);

        let expected = vec![("0.weight".to_string(), Shape::from([3, 2])), ("2.weight".to_string(), Shape::from([1]))];
        let msg = back.check_matches(&expected, &path).unwrap_err().to_string();
        assert!(msg.contains("'0.weight' is [2, 3]") && msg.contains("missing '2.weight'") && msg.contains("unexpected '0.bias'"), "{msg}");
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, b"definitely not safetensors").expect("write");
        let msg = Checkpoint::load(&path).unwrap_err().to_string();
        assert!(msg.contains("bad.safetensors"), "{msg}");
    }
}

