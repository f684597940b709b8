//! PyTorch `.pth` archives as `torch.save` writes them: a zip ([`super::zip`]) holding
//! `data.pkl`, a pickled state dict read by a bounded machine ([`super::pickle`]), and one
//! storage entry per tensor storage. Each tensor's view (offset, shape, strides) is checked to
//! lie inside its storage.

use super::{checked_numel, pickle, zip, Entries, Place, TensorMeta};
use anyhow::{bail, Context, Result};

/// The tensors of a `.pth` archive, and the storage entries they read.
pub(super) fn parse(b: &[u8]) -> Result<(Entries, Vec<(String, zip::Entry)>)> {
    let archive = zip::parse(b)?;
    let Some(pkl_name) = archive
        .names
        .iter()
        .find(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .cloned()
    else {
        bail!("the zip archive has no data.pkl (not a torch.save checkpoint)");
    };
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    let order_name = format!("{prefix}byteorder");
    if let Ok(order) = archive.data(b, &order_name) {
        if let Some(e) = archive.entries.get(&order_name) {
            e.verify(b, &order_name)?;
        }
        if order != b"little" {
            bail!(
                "the checkpoint's byte order is {:?}; only little-endian checkpoints are supported",
                String::from_utf8_lossy(order)
            );
        }
    }
    let pkl = archive.data(b, &pkl_name)?;
    if let Some(e) = archive.entries.get(&pkl_name) {
        e.verify(b, &pkl_name)?;
    }
    let mut out = Vec::new();
    let mut storages: Vec<(String, zip::Entry)> = Vec::new();
    let mut storage_index: std::collections::HashMap<String, usize> = Default::default();
    for (name, t) in pickle::state_dict(pkl)? {
        let s = &t.storage;
        let entry = format!("{prefix}data/{}", s.key);
        let Some(zip_entry) = archive.entries.get(&entry).cloned() else {
            bail!(
                "tensor {name}: its storage {entry} is missing from the archive (truncated or damaged)"
            );
        };
        let bytes = archive
            .data(b, &entry)
            .with_context(|| format!("tensor {name}"))?;
        let need = (s.numel as u128) * (s.elem_size as u128);
        if (bytes.len() as u128) < need {
            bail!(
                "tensor {name}: storage {entry} holds {} bytes but the pickle says {} elements of {} bytes",
                bytes.len(),
                s.numel,
                s.elem_size
            );
        }
        // From here every count fits in usize: the storage lies inside the file.
        let storage_numel = s.numel as usize;
        let to_usize = |v: u64| usize::try_from(v).ok();
        let shape = t
            .shape
            .iter()
            .map(|&d| to_usize(d))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| anyhow::anyhow!("tensor {name}: shape {:?} is too large", t.shape))?;
        let numel = checked_numel(&name, &shape)?;
        let offset = to_usize(t.offset).unwrap_or(usize::MAX);
        // The last element the view touches: offset + Σ (size − 1) × stride.
        let mut last = Some(offset);
        if numel > 0 {
            for (&d, &st) in shape.iter().zip(&t.stride) {
                last = last.and_then(|l| {
                    to_usize(st)
                        .and_then(|st| st.checked_mul(d - 1))
                        .and_then(|x| l.checked_add(x))
                });
            }
        }
        let inside = match last {
            Some(l) => numel == 0 || l < storage_numel,
            None => false,
        };
        if !inside || (numel == 0 && offset > storage_numel) {
            bail!(
                "tensor {name}: shape {:?} with strides {:?} at offset {} reaches past its storage of {} elements",
                t.shape,
                t.stride,
                t.offset,
                s.numel
            );
        }
        if numel > storage_numel {
            bail!(
                "tensor {name}: {numel} elements view a storage of only {storage_numel} (expanded tensors are not supported)"
            );
        }
        // Strides of size-1 dimensions never move; zero them so no index arithmetic can
        // overflow on them. Every other stride × (size − 1) was checked above.
        let strides: Vec<usize> = shape
            .iter()
            .zip(&t.stride)
            .map(|(&d, &st)| if d <= 1 { 0 } else { st as usize })
            .collect();
        let contiguous = is_row_major(&shape, &strides);
        out.push((
            name,
            TensorMeta {
                shape,
                dtype: s.dtype,
            },
            Place {
                base: zip_entry.start + if contiguous { offset * s.elem_size } else { 0 },
                elem_size: s.elem_size,
                type_name: format!("torch.{}Storage", s.type_name),
                view: (!contiguous).then_some((offset, strides)),
                storage: Some(*storage_index.entry(entry.clone()).or_insert_with(|| {
                    storages.push((entry.clone(), zip_entry.clone()));
                    storages.len() - 1
                })),
            },
        ));
    }
    Ok((out, storages))
}

/// Whether `stride` is the row-major layout of `shape` (dimensions of size 1 may have any
/// stride, as torch allows).
pub(super) fn is_row_major(shape: &[usize], stride: &[usize]) -> bool {
    let mut expect = 1usize;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expect {
            return false;
        }
        expect = expect.saturating_mul(d);
    }
    true
}
