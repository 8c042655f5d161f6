//! Small valid files of every format kiln reads, built with the crates' own writers
//! (what `kiln train` leaves in a run's folder), and damage that keeps a checkpoint
//! well-formed while making what is inside it hostile.
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use kiln_core::{Graph, HostData, HostTensor};
use kiln_data::{CharTokenizer, IDX_IMAGES_U8_MAGIC, IDX_LABELS_U8_MAGIC};
use kiln_nn::{init::seeded_rng, Module, GPT};
use kiln_train::{lm, Checkpoint, Config};
use safetensors::{tensor::TensorView, Dtype};

use crate::mutate::{mutate_toml, Rng};

/// One valid file, and where its length fields are: (offset, width, big-endian).
pub struct Seed {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    /// IDX: the rank the reader asks for.
    pub rank: usize,
    pub length_fields: Vec<(usize, usize, bool)>,
    /// A checkpoint: what it holds, to write again with damaged metadata.
    pub checkpoint: Option<Checkpoint>,
}

fn idx(magic: u32, dims: &[u32]) -> Vec<u8> {
    let mut bytes = magic.to_be_bytes().to_vec();
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    let elements: u32 = dims.iter().product();
    bytes.extend((0..elements).map(|i| (i * 37 % 256) as u8));
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

/// Images `[3, 4, 5]` and labels `[7]`, raw and gzip-compressed (as MNIST ships).
pub fn idx_files() -> Vec<Seed> {
    let images = idx(IDX_IMAGES_U8_MAGIC, &[3, 4, 5]);
    let labels = idx(IDX_LABELS_U8_MAGIC, &[7]);
    // gzip's trailer: CRC-32 then ISIZE, the uncompressed length the reader sizes by.
    let trailer = |gz: &[u8]| vec![(gz.len() - 8, 4, false), (gz.len() - 4, 4, false)];
    let (images_gz, labels_gz) = (gzip(&images), gzip(&labels));
    vec![
        Seed { name: "images-idx3-ubyte", rank: 3, length_fields: vec![(4, 4, true), (8, 4, true), (12, 4, true)], bytes: images, checkpoint: None },
        Seed { name: "labels-idx1-ubyte", rank: 1, length_fields: vec![(4, 4, true)], bytes: labels, checkpoint: None },
        Seed { name: "images-idx3-ubyte.gz", rank: 3, length_fields: trailer(&images_gz), bytes: images_gz, checkpoint: None },
        Seed { name: "labels-idx1-ubyte.gz", rank: 1, length_fields: trailer(&labels_gz), bytes: labels_gz, checkpoint: None },
    ]
}

/// A checkpoint's bytes as `Checkpoint::save` writes them, without touching a disk.
pub fn encode(checkpoint: &Checkpoint) -> Vec<u8> {
    let raw: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = checkpoint
        .tensors
        .iter()
        .map(|(name, t)| {
            let (dtype, bytes) = match &t.data {
                HostData::U32(v) => (Dtype::U32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                _ => (Dtype::F32, t.to_f32_vec().iter().flat_map(|x| x.to_le_bytes()).collect()),
            };
            (name.clone(), dtype, t.shape.dims().to_vec(), bytes)
        })
        .collect();
    let views = raw.iter().map(|(name, dtype, shape, bytes)| {
        (name.clone(), TensorView::new(*dtype, shape.clone(), bytes).expect("a consistent tensor"))
    });
    let metadata: HashMap<String, String> = checkpoint.metadata.clone().into_iter().collect();
    safetensors::serialize(views, Some(metadata)).expect("a valid checkpoint encodes")
}

fn small_mlp_config() -> Config {
    let mut config = Config::recipe("mnist-mlp").expect("recipe");
    config.model.mlp_mut().expect("an mlp").sizes = vec![3, 4, 2];
    config
}

fn ramp(shape: &[usize]) -> HostTensor {
    let n: usize = shape.iter().product();
    HostTensor::f32(shape.to_vec(), (0..n).map(|i| i as f32 * 0.25 - 1.0).collect())
}

/// The header length of a safetensors file: its first 8 bytes, little-endian.
const SAFETENSORS_HEADER_LENGTH: (usize, usize, bool) = (0, 8, false);

/// A run's checkpoint of a tiny MLP with Adam moments (as `kiln train` writes it, run
/// metadata included), and a file as PyTorch might write it: f16, f64 and u32 tensors
/// and no run metadata. The first is also written to `dir`, to check it loads.
pub fn checkpoint_files(dir: &Path) -> Vec<Seed> {
    let mut run = Checkpoint::new();
    for (name, shape) in [("0.weight", &[4, 3][..]), ("0.bias", &[4]), ("2.weight", &[2, 4]), ("2.bias", &[2])] {
        run.insert(name, ramp(shape));
        run.insert(format!("optimizer.{name}.exp_avg"), ramp(shape));
    }
    run.insert("optimizer.step", HostTensor::u32([1], vec![12]));
    run.set_run_meta(&small_mlp_config());
    run.set_meta("step", 12);
    run.set_meta("epoch", 1);
    let path = dir.join("run.safetensors");
    run.save(&path).expect("save the run checkpoint");
    assert_eq!(Checkpoint::load(&path).expect("the unmutated checkpoint loads"), run);

    let halves: Vec<u8> = [1.0f32, -2.0, 0.5, 65504.0].iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
    let doubles: Vec<u8> = [1.0f64, 1e-300, -3.5].iter().flat_map(|x| x.to_le_bytes()).collect();
    let counts: Vec<u8> = [7u32, 0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let foreign = safetensors::serialize(
        [
            ("embed.weight", TensorView::new(Dtype::F16, vec![2, 2], &halves).expect("f16")),
            ("scale", TensorView::new(Dtype::F64, vec![3], &doubles).expect("f64")),
            ("counts", TensorView::new(Dtype::U32, vec![2], &counts).expect("u32")),
        ],
        Some(HashMap::from([("format".to_string(), "pt".to_string())])),
    )
    .expect("encode");
    Checkpoint::from_bytes(&foreign, Path::new("foreign")).expect("the unmutated foreign file loads");

    vec![
        Seed { name: "run.safetensors", bytes: encode(&run), rank: 0, length_fields: vec![SAFETENSORS_HEADER_LENGTH], checkpoint: Some(run) },
        Seed { name: "foreign.safetensors", bytes: foreign, rank: 0, length_fields: vec![SAFETENSORS_HEADER_LENGTH], checkpoint: None },
    ]
}

/// Numbers as a checkpoint's metadata may hold them after damage (metadata are strings).
const HOSTILE_METADATA_NUMBERS: &[&str] = &["-1", "", "1e400", "nan", "18446744073709551616", "12 ", "0x10", "١٢"];

/// `checkpoint` written again, well-formed, with its config damaged as a TOML file is
/// (most often), or its step replaced, or a key the readers need removed.
pub fn with_damaged_metadata(rng: &mut Rng, seed: &Seed, checkpoint: &Checkpoint) -> (Vec<u8>, String) {
    let mut damaged = checkpoint.clone();
    let how = match rng.below(6) {
        0 => {
            let step = *rng.pick(HOSTILE_METADATA_NUMBERS);
            damaged.set_meta("step", step);
            format!("metadata step = '{step}'")
        }
        1 => {
            let key = *rng.pick(&["config", "step", "format"]);
            damaged.metadata.remove(key);
            format!("metadata '{key}' removed")
        }
        _ => {
            let (toml, how) = mutate_toml(rng, &checkpoint.metadata["config"]);
            damaged.set_meta("config", String::from_utf8_lossy(&toml));
            format!("metadata config: {how}")
        }
    };
    (encode(&damaged), format!("{}: {how}", seed.name))
}

/// The TOML of the recipes a config file is most often copied from: an MLP, a CNN
/// (layers as inline tables) and a GPT.
pub fn config_files() -> Vec<(&'static str, String)> {
    ["mnist-mlp", "mnist-cnn", "shakespeare-gpt-tiny"]
        .into_iter()
        .map(|name| (name, Config::recipe(name).expect("recipe").to_toml()))
        .collect()
}

/// A vocabulary with what JSON escapes: a newline, a quote, a backslash, and
/// characters outside ASCII.
pub fn tokenizer_json() -> String {
    CharTokenizer::from_text("First Citizen:\nBefore we proceed, hear me \"speak\" \\ caf\u{e9} \u{2713}").to_json()
}

/// Entries no vocabulary may hold: a lone surrogate, an empty or two-character string,
/// a control character, other JSON types, nesting past any sane depth.
fn hostile_vocabulary_entry(rng: &mut Rng) -> String {
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let entries = [r#""\ud800""#, r#""""#, r#""ab""#, "1", "null", r#""\u0000""#, r#"" ""#, r#""\n""#, "{}", "-1e400"];
    match rng.below(entries.len() + 1) {
        i if i < entries.len() => entries[i].to_string(),
        _ => deep,
    }
}

/// `json` with a hostile entry at the front of its vocabulary, or with its kind
/// changed, or its vocabulary dropped.
pub fn with_hostile_vocabulary_entry(rng: &mut Rng, json: &str) -> (Vec<u8>, String) {
    const CHARS: &str = "\"chars\": [";
    let at = json.find(CHARS).expect("a tokenizer.json has a chars array") + CHARS.len();
    let (text, how) = match rng.below(8) {
        0 => (json.replace("\"char\"", "\"bpe\""), "kind = bpe".to_string()),
        1 => (json.replacen(CHARS, "\"chars_\": [", 1), "chars renamed".to_string()),
        _ => {
            let entry = hostile_vocabulary_entry(rng);
            let shown = if entry.len() > 20 { format!("{}...", &entry[..20]) } else { entry.clone() };
            (format!("{}{entry},{}", &json[..at], &json[at..]), format!("vocabulary entry {shown} added"))
        }
    };
    (text.into_bytes(), how)
}

/// A GPT run's folder as `kiln train` leaves it: `best.safetensors` (the model's state
/// dict and the run's metadata) beside `tokenizer.json`.
pub struct GptRun {
    pub checkpoint: Seed,
    pub checkpoint_path: PathBuf,
    pub tokenizer: String,
}

pub fn gpt_run(dir: &Path) -> GptRun {
    let tokenizer = CharTokenizer::from_text("to be, or not to be");
    let mut config = Config::recipe("shakespeare-gpt-tiny").expect("recipe");
    {
        let m = config.model.gpt_mut().expect("a gpt");
        (m.n_layer, m.n_head, m.n_embd, m.block_size) = (1, 2, 8, 8);
    }
    let mut graph = Graph::new();
    let model = GPT::new(&mut graph, lm::gpt_config(&config, tokenizer.vocab_size()).expect("a gpt config"), &mut seeded_rng(0)).expect("a tiny GPT");
    let mut checkpoint = Checkpoint::new();
    for (name, tensor) in model.state_dict() {
        checkpoint.insert(name, graph.state_init(tensor).expect("a parameter has its initial value").clone());
    }
    checkpoint.set_run_meta(&config);
    checkpoint.set_meta("step", 10);
    let folder = dir.join("run");
    std::fs::create_dir_all(&folder).expect("run folder");
    let checkpoint_path = folder.join("best.safetensors");
    checkpoint.save(&checkpoint_path).expect("save the GPT checkpoint");
    tokenizer.save(folder.join("tokenizer.json")).expect("save the tokenizer");
    let bytes = std::fs::read(&checkpoint_path).expect("read back");
    GptRun {
        checkpoint: Seed { name: "best.safetensors", bytes, rank: 0, length_fields: vec![SAFETENSORS_HEADER_LENGTH], checkpoint: Some(checkpoint) },
        checkpoint_path,
        tokenizer: tokenizer.to_json(),
    }
}
