//! [`Mat`]: the row-major f32 matrices activations are kept in.

use super::pool::for_rows;

/// A row-major matrix of activations: `rows` tokens × `cols` channels.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        Self { rows, cols, data }
    }
    pub fn row(&self, t: usize) -> &[f32] {
        &self.data[t * self.cols..(t + 1) * self.cols]
    }
    pub fn row_mut(&mut self, t: usize) -> &mut [f32] {
        &mut self.data[t * self.cols..(t + 1) * self.cols]
    }
    pub fn last_row(&self) -> &[f32] {
        self.row(self.rows - 1)
    }
    /// `self += other`, elementwise (rows in parallel when large, as every elementwise
    /// operation here: the sequence path's are tokens × width, a few MB per layer).
    pub fn add_assign(&mut self, other: &Mat) {
        assert_eq!((self.rows, self.cols), (other.rows, other.cols));
        for_rows(&mut self.data, self.cols, |t, row| {
            for (a, b) in row.iter_mut().zip(other.row(t)) {
                *a += b;
            }
        });
    }
    /// Applies `f` to every element.
    pub fn map(mut self, f: impl Fn(f32) -> f32 + Sync) -> Mat {
        for_rows(&mut self.data, self.cols, |_, row| {
            for a in row.iter_mut() {
                *a = f(*a);
            }
        });
        self
    }
    /// Applies `f` to every row in place: an activation kernel over a slice
    /// ([`crate::kernels::sigmoid`], …), rows in parallel when large.
    pub fn apply(mut self, f: impl Fn(&mut [f32]) + Sync) -> Mat {
        for_rows(&mut self.data, self.cols, |_, row| f(row));
        self
    }
    /// Elementwise product.
    pub fn hadamard(mut self, other: &Mat) -> Mat {
        assert_eq!((self.rows, self.cols), (other.rows, other.cols));
        for_rows(&mut self.data, self.cols, |t, row| {
            for (a, b) in row.iter_mut().zip(other.row(t)) {
                *a *= b;
            }
        });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values that tell every element apart.
    fn numbered(rows: usize, cols: usize, offset: f32) -> Mat {
        Mat::from_vec(
            rows,
            cols,
            (0..rows * cols).map(|i| i as f32 + offset).collect(),
        )
    }

    #[test]
    fn elementwise_operations_pair_each_element_with_its_own_on_large_matrices() {
        // Large enough (300 × 257 > 2^15 elements) to be split across threads by rows, with a
        // width that is no multiple of the split.
        let (rows, cols) = (300, 257);
        let (a, b) = (numbered(rows, cols, 1.0), numbered(rows, cols, 0.5));
        let mut sum = a.clone();
        sum.add_assign(&b);
        let product = a.clone().hadamard(&b);
        let mapped = a.clone().map(|v| 2.0 * v - 1.0);
        let bias: Vec<f32> = (0..cols).map(|j| 1000.0 * j as f32).collect();
        let shifted = crate::ops::add_row(a.clone(), &bias);
        for i in 0..rows * cols {
            let (x, y) = (a.data[i], b.data[i]);
            assert_eq!(sum.data[i], x + y, "add_assign at {i}");
            assert_eq!(product.data[i], x * y, "hadamard at {i}");
            assert_eq!(mapped.data[i], 2.0 * x - 1.0, "map at {i}");
            assert_eq!(shifted.data[i], x + bias[i % cols], "add_row at {i}");
        }
    }
}
