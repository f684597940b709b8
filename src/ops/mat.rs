//! [`Mat`]: the row-major f32 matrices activations are kept in.

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
    /// `self += other`, elementwise.
    pub fn add_assign(&mut self, other: &Mat) {
        for (a, b) in self.data.iter_mut().zip(&other.data) {
            *a += b;
        }
    }
    /// Applies `f` to every element.
    pub fn map(mut self, f: impl Fn(f32) -> f32) -> Mat {
        for a in self.data.iter_mut() {
            *a = f(*a);
        }
        self
    }
    /// Elementwise product.
    pub fn hadamard(mut self, other: &Mat) -> Mat {
        for (a, b) in self.data.iter_mut().zip(&other.data) {
            *a *= b;
        }
        self
    }
}
