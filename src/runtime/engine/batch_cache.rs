//! The state of a ragged batch of sequences decoding together ([`BatchCache`]): per attention
//! half-layer one KV storage shared by every row (`[R, Hk, capacity, D]` f32, row `b` = sequence
//! `b`, each with its own length), the conv states `[N, C, S]` and `prev_hs` `[N, H]` of the N
//! sequences, and each sequence's position. Sequences join from a single-sequence
//! [`ModelCache`] (after their prompt was prefilled alone) and leave by row, so joining and leaving
//! copy one sequence's state; a decode step appends one position per row in place.
use mlx_rs::ops::concatenate;
use mlx_rs::ops::indexing::{IndexOp, TryIndexMutOp};
use mlx_rs::ops::zeros_dtype;
use mlx_rs::{Array, Dtype};

use crate::config::ZayaConfig;
use crate::error::{Result, ZayaError};
use crate::model::cache::{AttnCache, ModelCache};

/// One attention half-layer's state for the whole batch.
#[derive(Debug, Clone)]
pub(crate) struct BatchLayer {
    /// `[R, Hk, capacity, D]` f32 (R ≥ N rows; rows ≥ N are spare).
    pub keys: Option<Array>,
    pub values: Option<Array>,
    /// `[N, C, S]` f32.
    pub conv: Option<Array>,
    /// `[N, H]` f32.
    pub prev: Option<Array>,
}

/// The whole model's state for a ragged batch of single sequences.
#[derive(Debug, Clone)]
pub struct BatchCache {
    layers: Vec<BatchLayer>,
    /// Positions held per row (each row's next token goes to this position).
    lens: Vec<usize>,
    /// Storage rows and positions allocated.
    rows_cap: usize,
    cap: usize,
    kv_step: usize,
    kv_heads: i32,
    head_dim: i32,
}

fn f32_of(a: Array) -> Result<Array> {
    Ok(if a.dtype() == Dtype::Float32 {
        a
    } else {
        a.as_dtype(Dtype::Float32)?
    })
}

impl BatchCache {
    /// An empty batch for `cfg`; KV storage grows by `kv_step` positions.
    pub fn new(cfg: &ZayaConfig, kv_step: usize) -> Self {
        let layer = BatchLayer {
            keys: None,
            values: None,
            conv: None,
            prev: None,
        };
        BatchCache {
            layers: vec![layer; cfg.num_attention_layers()],
            lens: Vec::new(),
            rows_cap: 0,
            cap: 0,
            kv_step: kv_step.max(1),
            kv_heads: cfg.num_kv_heads as i32,
            head_dim: cfg.head_dim as i32,
        }
    }

    /// Sequences in the batch.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// True when no sequence is in the batch.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Positions held by each row.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Allocated KV positions per row.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub(crate) fn layer_mut(&mut self, layer: usize) -> &mut BatchLayer {
        &mut self.layers[layer / 2]
    }

    /// Every array the batch holds (evaluated together with a step's outputs).
    pub(crate) fn arrays(&self) -> impl Iterator<Item = &Array> {
        self.layers
            .iter()
            .flat_map(|l| [&l.keys, &l.values, &l.conv, &l.prev].into_iter().flatten())
    }

    /// Evaluates every array the batch holds (after joins and leaves, which build lazy updates).
    pub fn eval(&self) -> Result<()> {
        Ok(mlx_rs::transforms::eval(self.arrays())?)
    }

    /// Grows every layer's storage to at least `rows` rows and `positions` positions (whole
    /// multiples of the KV step); copies the storage only when it grows.
    fn reserve(&mut self, rows: usize, positions: usize) -> Result<()> {
        let new_rows = if rows > self.rows_cap {
            rows.max(self.rows_cap * 2).max(1)
        } else {
            self.rows_cap
        };
        let new_cap = if positions > self.cap {
            positions.div_ceil(self.kv_step) * self.kv_step
        } else {
            self.cap
        };
        if new_rows == self.rows_cap && new_cap == self.cap {
            return Ok(());
        }
        let (hk, d) = (self.kv_heads, self.head_dim);
        let (old_rows, old_cap) = (self.rows_cap as i32, self.cap as i32);
        let grow = |old: Option<Array>| -> Result<Array> {
            let mut a = match old {
                Some(a) => a,
                None => return Ok(zeros_dtype(&[new_rows as i32, hk, new_cap as i32, d], Dtype::Float32)?),
            };
            if new_cap as i32 > old_cap {
                let extra = zeros_dtype(&[old_rows, hk, new_cap as i32 - old_cap, d], Dtype::Float32)?;
                a = concatenate(&[a, extra], 2)?;
            }
            if new_rows as i32 > old_rows {
                let extra = zeros_dtype(&[new_rows as i32 - old_rows, hk, new_cap as i32, d], Dtype::Float32)?;
                a = concatenate(&[a, extra], 0)?;
            }
            Ok(a)
        };
        for l in &mut self.layers {
            l.keys = Some(grow(l.keys.take())?);
            l.values = Some(grow(l.values.take())?);
        }
        self.rows_cap = new_rows;
        self.cap = new_cap;
        Ok(())
    }

    /// Makes room for one more position in every row (before a decode step).
    pub(crate) fn reserve_step(&mut self) -> Result<()> {
        let need = self.lens.iter().copied().max().unwrap_or(0) + 1;
        self.reserve(self.lens.len(), need)
    }

    /// Adds a sequence from its single-sequence state (batch 1, at least one position) as the last
    /// row; returns the row.
    pub fn insert(&mut self, seq: &ModelCache) -> Result<usize> {
        if seq.batch().unwrap_or(1) != 1 {
            return Err(ZayaError::InvalidArgument(
                "a batch row takes a single-sequence cache".into(),
            ));
        }
        let len = seq.offset();
        if len == 0 || seq.is_poisoned() {
            return Err(ZayaError::InvalidArgument(
                "a sequence joins the batch after its prompt is prefilled".into(),
            ));
        }
        let row = self.lens.len();
        self.reserve(row + 1, len + 1)?;
        for (l, a) in self.layers.iter_mut().zip(seq.attn_layers()) {
            let (Some(k), Some(v), Some(c), Some(p)) = (a.keys(), a.values(), a.conv_state.clone(), a.prev_hs.clone())
            else {
                return Err(ZayaError::InvalidArgument(
                    "the sequence's cache has an empty layer".into(),
                ));
            };
            let (r, n) = (row as i32, len as i32);
            let put = |store: Option<Array>, new: Array| -> Result<Array> {
                let mut store = store.expect("reserved");
                store.try_index_mut((r..r + 1, .., 0..n, ..), f32_of(new)?)?;
                Ok(store)
            };
            l.keys = Some(put(l.keys.take(), k)?);
            l.values = Some(put(l.values.take(), v)?);
            let join = |all: Option<Array>, one: Array| -> Result<Array> {
                let one = f32_of(one)?;
                Ok(match all {
                    Some(a) if row > 0 => concatenate(&[a, one], 0)?,
                    _ => one,
                })
            };
            l.conv = Some(join(l.conv.take(), c)?);
            l.prev = Some(join(l.prev.take(), p)?);
        }
        self.lens.push(len);
        Ok(row)
    }

    /// The single-sequence state of `row` (a copy: the batch is unchanged). Route counters start
    /// at zero.
    pub fn extract(&self, row: usize, cfg: &ZayaConfig) -> Result<ModelCache> {
        self.check_row(row)?;
        let (r, n) = (row as i32, self.lens[row] as i32);
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let kv = |a: &Option<Array>| -> Result<Array> {
                Ok(a.as_ref()
                    .expect("rows exist")
                    .index((r..r + 1, .., 0..n, ..))
                    .contiguous()?)
            };
            let row_of = |a: &Option<Array>| a.as_ref().expect("rows exist").index(r..r + 1);
            layers.push(AttnCache::from_parts(
                kv(&l.keys)?,
                kv(&l.values)?,
                row_of(&l.conv),
                row_of(&l.prev),
            ));
        }
        let zeros = vec![0u64; cfg.num_hidden_layers];
        ModelCache::from_parts(cfg, layers, self.lens[row], 1, zeros.clone(), zeros)
    }

    /// Removes `row`; the last row moves into its place (as `Vec::swap_remove`). Returns the row
    /// that moved, if one did.
    pub fn swap_remove(&mut self, row: usize) -> Result<Option<usize>> {
        self.check_row(row)?;
        let last = self.lens.len() - 1;
        let n = self.lens.len() as i32;
        let keep: Vec<i32> = (0..n)
            .filter(|&i| i != last as i32)
            .map(|i| if i == row as i32 { last as i32 } else { i })
            .collect();
        let keep = Array::from_slice(&keep, &[n - 1]);
        let moved_len = self.lens[last] as i32;
        for l in &mut self.layers {
            if row != last {
                // copy the last row out first, so the storage stays unshared and is written in place
                let mv = |a: &Array| -> Result<Array> {
                    let c = a
                        .index((last as i32..last as i32 + 1, .., 0..moved_len, ..))
                        .contiguous()?;
                    c.eval()?;
                    Ok(c)
                };
                let (mk, mv_) = (
                    mv(l.keys.as_ref().expect("rows"))?,
                    mv(l.values.as_ref().expect("rows"))?,
                );
                let put = |store: Option<Array>, new: &Array| -> Result<Array> {
                    let mut store = store.expect("rows");
                    let r = row as i32;
                    store.try_index_mut((r..r + 1, .., 0..moved_len, ..), new)?;
                    Ok(store)
                };
                l.keys = Some(put(l.keys.take(), &mk)?);
                l.values = Some(put(l.values.take(), &mv_)?);
            }
            if n == 1 {
                l.conv = None;
                l.prev = None;
            } else {
                l.conv = Some(l.conv.take().expect("rows").take_axis(&keep, 0)?);
                l.prev = Some(l.prev.take().expect("rows").take_axis(&keep, 0)?);
            }
        }
        self.lens.swap_remove(row);
        if self.lens.is_empty() {
            // nothing left: free the storage
            for l in &mut self.layers {
                l.keys = None;
                l.values = None;
            }
            self.rows_cap = 0;
            self.cap = 0;
        }
        Ok((row != last).then_some(last))
    }

    /// Every row advanced by one position (after a decode step).
    pub(crate) fn advance(&mut self) {
        for l in &mut self.lens {
            *l += 1;
        }
    }

    fn check_row(&self, row: usize) -> Result<()> {
        if row >= self.lens.len() {
            return Err(ZayaError::InvalidArgument(format!(
                "row {row} is not in a batch of {}",
                self.lens.len()
            )));
        }
        Ok(())
    }
}
