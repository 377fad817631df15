//! The execution plan: how each half-layer runs, decided once when the model is built, from the
//! options and from what each layer's weights support. [`ZayaModel::plan`](crate::model::ZayaModel::plan)
//! exposes it and `zaya info --plan` prints it; tests/model_graph.rs checks that a decode step's graph
//! holds exactly the fused primitives the plan names.
use serde::Serialize;

use crate::ext::{ExtMode, MatmulPrecision};

/// One implementation choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Path {
    /// Our fused mlx-ext primitive(s).
    Fused,
    /// Plain MLX ops (the reference path).
    #[default]
    Plain,
}

impl Path {
    pub(crate) fn of(fused: bool) -> Self {
        if fused {
            Path::Fused
        } else {
            Path::Plain
        }
    }
}

/// How one half-layer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LayerPlan {
    /// CCA attention. Fused: the projections as `affine_multi` nodes, `cca_qk`, `kv_append`,
    /// `cca_attention`; plain: MLX ops around the `cca_conv` primitive.
    Attention { path: Path },
    /// MoE: the router (`ext::router` or MLX ops), the routed experts (`tq_switch_glu` or the plain
    /// TurboQuant matmuls), and the output and skip route (`moe_combine` or MLX ops).
    Moe { router: Path, experts: Path, combine: Path },
}

/// The whole model's plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExecutionPlan {
    /// Residual merge + RMSNorm of every half-layer (`res_norm` or MLX ops); the fused path also
    /// carries the hidden state as rows `[B·T, H]` between half-layers.
    pub norms: Path,
    /// Per half-layer, in order.
    pub layers: Vec<LayerPlan>,
    /// Whether several sequences can decode as one batch (`ZayaModel::decode_batch`): the fused
    /// norms and attention everywhere, f32 (with bf16 the sequences decode in turn).
    pub batching: bool,
    /// How the fused primitives (and the plain path's conv primitive) execute: `Auto` = the CPU
    /// kernel where the stream has one, else the op's portable graph of MLX ops.
    pub ext: ExtMode,
    /// The arithmetic of the fused affine, TurboQuant and router matmuls: `Bf16` with `--dtype bf16` on the
    /// fused path (bf16 dot products, f32 accumulation, activations kept in f32 between the
    /// kernels; see [`MatmulPrecision`]), else `F32`.
    pub matmul: MatmulPrecision,
}

impl std::fmt::Display for ExecutionPlan {
    /// One line per distinct half-layer plan, with how many half-layers follow it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = |p: Path| if p == Path::Fused { "fused" } else { "plain" };
        writeln!(f, "residual merge + norm: {}", name(self.norms))?;
        let ext = match self.ext {
            ExtMode::Auto => "auto (CPU kernels where the stream has them, else portable graphs)",
            ExtMode::Portable => "portable (plain-MLX-ops graphs)",
            ExtMode::Primitive => "primitive (CPU kernels only)",
        };
        writeln!(f, "mlx-ext ops: {ext}")?;
        if self.matmul == MatmulPrecision::Bf16 {
            writeln!(
                f,
                "matmuls: bf16 dot products with f32 accumulation (prefill-sized calls, AVX512-BF16)"
            )?;
        }
        let mut seen: Vec<(LayerPlan, usize)> = Vec::new();
        for l in &self.layers {
            match seen.iter_mut().find(|(x, _)| x == l) {
                Some(e) => e.1 += 1,
                None => seen.push((*l, 1)),
            }
        }
        for (l, n) in seen {
            match l {
                LayerPlan::Attention { path } => writeln!(f, "{n} CCA attention half-layers: {}", name(path))?,
                LayerPlan::Moe {
                    router,
                    experts,
                    combine,
                } => writeln!(
                    f,
                    "{n} MoE half-layers: router {}, experts {}, output {}",
                    name(router),
                    name(experts),
                    name(combine)
                )?,
            }
        }
        write!(
            f,
            "batched decoding: {}",
            if self.batching {
                "yes"
            } else {
                "no (sequences decode in turn)"
            }
        )
    }
}
