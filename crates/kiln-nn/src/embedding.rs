//! `torch.nn.Embedding`.
use kiln_core::{DType, Graph, GraphError, HostTensor, Result, Tensor};

use crate::init::{self, Rng};
use crate::module::{join_name, Module};

/// A lookup table of `num_embeddings` vectors of size `embedding_dim`, as
/// `torch.nn.Embedding(num_embeddings, embedding_dim)`.
///
/// Parameter: `{prefix}.weight` `[num_embeddings, embedding_dim]`, f32. Init (PyTorch's
/// default): N(0, 1). [`Embedding::from_init`] takes any other initial value (GPT-2 uses
/// N(0, 0.02)).
///
/// `forward` takes u32 indices of any shape `I` and returns `I ++ [embedding_dim]`; its
/// gradient scatter-adds into the rows that were read. An index past the table reads as
/// a row of zeros (kiln's gather) where PyTorch would raise: check indices on the host
/// when they come from users.
#[derive(Clone, Debug)]
pub struct Embedding {
    prefix: String,
    pub num_embeddings: usize,
    pub embedding_dim: usize,
    pub weight: Tensor,
}

impl Embedding {
    /// An embedding initialised N(0, 1), as `torch.nn.Embedding`.
    pub fn new<R: Rng + ?Sized>(
        g: &mut Graph,
        prefix: &str,
        num_embeddings: usize,
        embedding_dim: usize,
        rng: &mut R,
    ) -> Result<Embedding> {
        let weight_init = init::normal([num_embeddings, embedding_dim], 0.0, 1.0, rng);
        Embedding::from_init(g, prefix, weight_init)
    }

    /// An embedding whose weight starts at `weight_init` (f32, `[num_embeddings,
    /// embedding_dim]`).
    pub fn from_init(g: &mut Graph, prefix: &str, weight_init: HostTensor) -> Result<Embedding> {
        let dims = weight_init.shape.dims().to_vec();
        let [num_embeddings, embedding_dim] = dims[..] else {
            return Err(GraphError::new(
                Self::describe(prefix),
                format!("the weight must be [num_embeddings, embedding_dim], got shape {}", weight_init.shape),
            ));
        };
        let weight = g.state(&join_name(prefix, "weight"), DType::F32, weight_init)?;
        Ok(Embedding { prefix: prefix.to_string(), num_embeddings, embedding_dim, weight })
    }

    fn describe(prefix: &str) -> String {
        if prefix.is_empty() {
            "Embedding".to_string()
        } else {
            format!("Embedding '{prefix}'")
        }
    }
}

impl Module for Embedding {
    /// `indices`: u32 of any shape; the output appends `embedding_dim` to it.
    fn forward(&self, g: &mut Graph, indices: Tensor) -> Result<Tensor> {
        if g.dtype(indices) != DType::U32 {
            return Err(GraphError::new(
                Self::describe(&self.prefix),
                format!(
                    "expects u32 token indices, got {} {} ({} x {} table)",
                    g.dtype(indices),
                    g.shape(indices),
                    self.num_embeddings,
                    self.embedding_dim
                ),
            ));
        }
        g.gather_rows(self.weight, indices)
    }

    fn params(&self) -> Vec<(String, Tensor)> {
        vec![(join_name(&self.prefix, "weight"), self.weight)]
    }
}
