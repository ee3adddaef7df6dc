//! Finding the face's skin in each frame and taking its mean colour.
//!
//! Work is done on the chroma grid (for 4:2:0, one cell per 2×2 pixels): skin is told by its
//! chroma. Chroma's distance from grey grows with brightness, so the face is followed by its
//! chroma relative to its luma, which a change of light's strength leaves alone.
//! - The face is found once: the largest face-shaped region (upright, filling most of its box,
//!   neither tiny nor most of the frame) of cells whose chroma lies in a broad skin range (Chai & Ngan's Cb/Cr box, widened so that tinted light does not push skin
//!   out of it). Its own chroma (mean and spread) becomes the skin model for this video. A
//!   region too large to be a face (a cream or wooden wall that the face touches) is split in
//!   two by chroma and the face looked for in each part.
//! - Each frame then looks for cells matching that model inside the face's box of the frame
//!   before, widened so that the head may move; the box follows the skin found, and the model
//!   follows slow changes of the light's colour.
//! - Only cells whose four neighbours are skin too are averaged: the face's edge, where skin
//!   and background mix as the head moves, is left out.

use super::Trace;
use super::y4m::{Header, rgb_of_mean};
use crate::ingest::vitals::Problem;

/// The broad skin range used to find the face (8-bit Cb and Cr): Chai & Ngan's box, a little
/// wider in Cb and Cr so that skin under tinted light stays in it, and still excluding greys
/// (Cr 128).
const CB_RANGE: (f64, f64) = (70.0, 130.0);
const CR_RANGE: (f64, f64) = (133.0, 180.0);
/// Brightness outside which a cell is not used (too dark to carry a signal, or clipped).
const Y_RANGE: (f64, f64) = (25.0, 245.0);
/// The smallest and largest face, as a share of the frame's cells (a skin-coloured wall is
/// larger than a face).
const MIN_FACE_SHARE: f64 = 0.01;
const MAX_FACE_SHARE: f64 = 0.6;
/// The least share of its box a face fills (an ellipse fills 0.79).
const MIN_FACE_FILL: f64 = 0.45;
/// How far the search box extends beyond the face's box of the frame before, as a share of
/// its size on each side.
const MARGIN: f64 = 0.25;
/// A cell is skin when its chroma is within this many spreads of the model's, the tolerance
/// kept between [`MIN_TOLERANCE`] and [`MAX_TOLERANCE`] (so that the model never grows to
/// take in the background).
const TOLERANCE_SPREADS: f64 = 2.5;
const MIN_TOLERANCE: f64 = 0.03;
const MAX_TOLERANCE: f64 = 0.08;
/// How fast the skin model follows the light's colour (weight of each frame).
const MODEL_FOLLOW: f64 = 0.01;
/// Frames without enough skin, at most, as a share of all: more means the face was lost.
const MAX_MISSING_SHARE: f64 = 0.2;

/// One frame's planes as 8-bit-scaled samples on the chroma grid.
struct Grid<'f> {
    header: &'f Header,
    frame: &'f [u8],
    /// Chroma grid size and the luma block each cell covers.
    width: usize,
    height: usize,
    x_step: usize,
    y_step: usize,
    /// Whether the grid is a subsampling of full-resolution chroma (4:4:4 read every other
    /// sample, to keep the work per frame bounded).
    stride: usize,
}

impl<'f> Grid<'f> {
    fn new(header: &'f Header, frame: &'f [u8]) -> Grid<'f> {
        let (cw, ch) = header.chroma_size();
        let (x_shift, y_shift) = header.chroma.unwrap_or((0, 0));
        // Full-resolution chroma is read every other sample, as 4:2:0 would be.
        let stride = if x_shift == 0 && y_shift == 0 { 2 } else { 1 };
        Grid {
            header,
            frame,
            width: cw.div_ceil(stride),
            height: ch.div_ceil(stride),
            x_step: (1 << x_shift) * stride,
            y_step: (1 << y_shift) * stride,
            stride,
        }
    }

    fn sample(&self, plane_offset: usize, index: usize) -> f64 {
        let scale = 255.0 / f64::from(self.header.max_value);
        match self.header.bytes_per_sample {
            1 => f64::from(self.frame[plane_offset + index]),
            _ => {
                let at = plane_offset + 2 * index;
                f64::from(u16::from_le_bytes([self.frame[at], self.frame[at + 1]])) * scale
            }
        }
    }

    /// Y (of the cell's first pixel), Cb and Cr of cell (x, y).
    fn cell(&self, x: usize, y: usize) -> (f64, f64, f64) {
        let (cw, ch) = self.header.chroma_size();
        let luma_plane = self.header.width * self.header.height;
        let chroma_index = (y * self.stride) * cw + x * self.stride;
        let luma_index = (y * self.y_step).min(self.header.height - 1) * self.header.width
            + (x * self.x_step).min(self.header.width - 1);
        let luma = self.sample(0, luma_index);
        let cb = self.sample(luma_plane * self.header.bytes_per_sample, chroma_index);
        let cr = self.sample((luma_plane + cw * ch) * self.header.bytes_per_sample, chroma_index);
        (luma, cb, cr)
    }
}

/// A box on the chroma grid, inclusive bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Area {
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
}

/// Chroma relative to luma: `((Cb - 128) / Y, (Cr - 128) / Y)`, the same for a surface however
/// strongly it is lit.
fn relative_chroma(luma: f64, cb: f64, cr: f64) -> (f64, f64) {
    let luma = luma.max(1.0);
    ((cb - 128.0) / luma, (cr - 128.0) / luma)
}

/// The skin's relative chroma: median and spread of each part.
#[derive(Debug, Clone, Copy)]
struct Model {
    u: (f64, f64),
    v: (f64, f64),
}

impl Model {
    fn matches(&self, luma: f64, cb: f64, cr: f64) -> bool {
        let (u, v) = relative_chroma(luma, cb, cr);
        let near = |value: f64, (mean, spread): (f64, f64)| {
            (value - mean).abs() <= (TOLERANCE_SPREADS * spread).clamp(MIN_TOLERANCE, MAX_TOLERANCE)
        };
        near(u, self.u) && near(v, self.v)
    }
}

/// Follows the face through a video's frames, collecting its mean skin colour.
pub struct Tracker {
    face: Option<(Area, Model)>,
    rgb: Vec<[f64; 3]>,
    /// Per frame: whether enough skin was found.
    found: Vec<bool>,
    mask: Vec<bool>,
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker { face: None, rgb: Vec::new(), found: Vec::new(), mask: Vec::new() }
    }

    /// Takes one frame (its planes as [`super::y4m::read_frame`] read them).
    pub fn add(&mut self, header: &Header, frame: &[u8]) {
        let grid = Grid::new(header, frame);
        if self.face.is_none() {
            // As the camera saw it; else as if the light were white (grey world), for skin that
            // tinted light has pushed out of the skin range.
            self.face = find_face(&grid, (0.0, 0.0)).or_else(|| find_face(&grid, grey_world(&grid)));
        }
        let colour = self.face.as_mut().and_then(|face| follow(&grid, face, &mut self.mask));
        if colour.is_none() && self.found.iter().rev().take(header.rate as usize).all(|found| !found) {
            // Lost for a second: look for the face anew.
            self.face = None;
        }
        self.found.push(colour.is_some());
        self.rgb.push(colour.map(|(y, cb, cr)| rgb_of_mean(y, cb, cr, header.full_range)).unwrap_or([f64::NAN; 3]));
    }

    /// The trace of the skin's mean colour, frames without skin filled in from their
    /// neighbours; a problem when the face was missing from too many frames.
    pub fn finish(self, rate: f64) -> Result<Trace, Problem> {
        let frames = self.found.len();
        let missing = self.found.iter().filter(|found| !**found).count();
        if frames == 0 {
            return Err(Problem::new("the video has no frames"));
        }
        if missing == frames {
            return Err(Problem::new("no face found in the video"));
        }
        if missing as f64 > MAX_MISSING_SHARE * frames as f64 {
            return Err(Problem::new(format!("the face was found in only {} of {frames} frames", frames - missing)));
        }
        let mut rgb = self.rgb;
        fill_gaps(&mut rgb);
        Ok(Trace { rate, rgb, start: None, device: None })
    }
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new()
    }
}

/// Replaces frames without a colour by linear interpolation between their neighbours.
fn fill_gaps(rgb: &mut [[f64; 3]]) {
    let known: Vec<usize> = (0..rgb.len()).filter(|&index| !rgb[index][0].is_nan()).collect();
    for index in 0..rgb.len() {
        if !rgb[index][0].is_nan() {
            continue;
        }
        let after = known.partition_point(|&k| k < index);
        rgb[index] = match (after.checked_sub(1).map(|at| known[at]), known.get(after)) {
            (Some(before), Some(&next)) => {
                let weight = (index - before) as f64 / (next - before) as f64;
                std::array::from_fn(|c| rgb[before][c] + (rgb[next][c] - rgb[before][c]) * weight)
            }
            (Some(before), None) => rgb[before],
            (None, Some(&next)) => rgb[next],
            (None, None) => [0.0; 3],
        };
    }
}

/// The frame's mean relative chroma: the light's tint if the scene is grey on average.
fn grey_world(grid: &Grid<'_>) -> (f64, f64) {
    let (mut sum_u, mut sum_v) = (0.0, 0.0);
    for y in 0..grid.height {
        for x in 0..grid.width {
            let (luma, cb, cr) = grid.cell(x, y);
            let (u, v) = relative_chroma(luma, cb, cr);
            sum_u += u;
            sum_v += v;
        }
    }
    let cells = (grid.width * grid.height).max(1) as f64;
    (sum_u / cells, sum_v / cells)
}

/// The largest face-shaped region of broadly skin-coloured cells, with its skin model; `tint`
/// (a relative chroma) is taken off each cell's before the skin range is applied. A region too
/// large to be a face (a skin-coloured wall that the face touches) is split in two by its
/// cells' chroma, and the face looked for in each part.
fn find_face(grid: &Grid<'_>, tint: (f64, f64)) -> Option<(Area, Model)> {
    let (width, height) = (grid.width, grid.height);
    let mut skin = vec![false; width * height];
    for y in 0..height {
        for x in 0..width {
            let (luma, cb, cr) = grid.cell(x, y);
            let (cb, cr) = (cb - tint.0 * luma, cr - tint.1 * luma);
            skin[y * width + x] = (Y_RANGE.0..=Y_RANGE.1).contains(&luma)
                && (CB_RANGE.0..=CB_RANGE.1).contains(&cb)
                && (CR_RANGE.0..=CR_RANGE.1).contains(&cr);
        }
    }
    let (mut best, too_large) = face_region(grid, &skin);
    if best.is_none() {
        for region in too_large {
            for part in split_by_chroma(grid, &region) {
                if let (Some(found), _) = face_region(grid, &part)
                    && best.as_ref().is_none_or(|(_, cells): &Region| found.1.len() > cells.len())
                {
                    best = Some(found);
                }
            }
        }
    }
    let (area, cells) = best?;
    let chroma = chroma_of(grid, &cells);
    // Median and median absolute deviation: the region may take in some hair or lips, which
    // must not widen the model.
    let spread = |values: &dyn Fn(&(f64, f64)) -> f64| {
        let mut sorted: Vec<f64> = chroma.iter().map(values).collect();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let mut deviations: Vec<f64> = sorted.iter().map(|value| (value - median).abs()).collect();
        deviations.sort_by(f64::total_cmp);
        (median, 1.4826 * deviations[deviations.len() / 2])
    };
    Some((area, Model { u: spread(&|c| c.0), v: spread(&|c| c.1) }))
}

/// The connected regions (4-neighbours) of `mask`: the largest face-shaped one (upright or
/// square, filling most of its box, neither tiny nor most of the frame) with its box, and
/// those too large to be a face.
fn face_region(grid: &Grid<'_>, mask: &[bool]) -> (Option<Region>, Vec<Vec<usize>>) {
    let (width, height) = (grid.width, grid.height);
    let mut label = vec![false; width * height];
    let mut best: Option<Region> = None;
    let mut too_large = Vec::new();
    let cells_in_frame = (width * height) as f64;
    // An explicit stack: bounded by the grid's size.
    let mut stack = Vec::new();
    for start in 0..width * height {
        if !mask[start] || label[start] {
            continue;
        }
        let mut cells = Vec::new();
        label[start] = true;
        stack.push(start);
        while let Some(cell) = stack.pop() {
            cells.push(cell);
            let (x, y) = (cell % width, cell / width);
            let neighbours = [
                (x > 0).then(|| cell - 1),
                (x + 1 < width).then(|| cell + 1),
                (y > 0).then(|| cell - width),
                (y + 1 < height).then(|| cell + width),
            ];
            for next in neighbours.into_iter().flatten() {
                if mask[next] && !label[next] {
                    label[next] = true;
                    stack.push(next);
                }
            }
        }
        let size = cells.len() as f64;
        if size > MAX_FACE_SHARE * cells_in_frame {
            too_large.push(cells);
            continue;
        }
        if size < MIN_FACE_SHARE * cells_in_frame || best.as_ref().is_some_and(|(_, best)| best.len() >= cells.len()) {
            continue;
        }
        let xs = cells.iter().map(|cell| cell % width);
        let ys = cells.iter().map(|cell| cell / width);
        let area = Area {
            x0: xs.clone().min().unwrap_or(0) as f64,
            x1: xs.max().unwrap_or(0) as f64,
            y0: ys.clone().min().unwrap_or(0) as f64,
            y1: ys.max().unwrap_or(0) as f64,
        };
        let (box_width, box_height) = (area.x1 - area.x0 + 1.0, area.y1 - area.y0 + 1.0);
        if (0.7..=2.5).contains(&(box_height / box_width)) && size >= MIN_FACE_FILL * box_width * box_height {
            best = Some((area, cells));
        }
    }
    (best, too_large)
}

/// A region of the chroma grid: its box and its cells (indices into the grid).
type Region = (Area, Vec<usize>);

/// The relative chroma of each of `cells` (indices into the grid).
fn chroma_of(grid: &Grid<'_>, cells: &[usize]) -> Vec<(f64, f64)> {
    cells
        .iter()
        .map(|&cell| {
            let (luma, cb, cr) = grid.cell(cell % grid.width, cell / grid.width);
            relative_chroma(luma, cb, cr)
        })
        .collect()
}

/// Rounds of the two-means split at most.
const SPLIT_ROUNDS: usize = 12;

/// The cells of `region` in two masks, by two-means clustering of their relative chroma along
/// the direction it varies most (started at its 10th and 90th percentiles).
fn split_by_chroma(grid: &Grid<'_>, region: &[usize]) -> [Vec<bool>; 2] {
    let chroma = chroma_of(grid, region);
    let n = chroma.len().max(1) as f64;
    let (mean_u, mean_v) = chroma.iter().fold((0.0, 0.0), |(u, v), c| (u + c.0 / n, v + c.1 / n));
    let (mut suu, mut suv, mut svv) = (0.0, 0.0, 0.0);
    for (u, v) in &chroma {
        let (du, dv) = (u - mean_u, v - mean_v);
        suu += du * du;
        suv += du * dv;
        svv += dv * dv;
    }
    // The principal direction of the 2×2 covariance.
    let angle = 0.5 * (2.0 * suv).atan2(suu - svv);
    let (cos, sin) = (angle.cos(), angle.sin());
    let projected: Vec<f64> = chroma.iter().map(|(u, v)| (u - mean_u) * cos + (v - mean_v) * sin).collect();
    let mut sorted = projected.clone();
    sorted.sort_by(f64::total_cmp);
    let at = |share: f64| sorted.get((share * (sorted.len().max(1) - 1) as f64) as usize).copied().unwrap_or(0.0);
    let mut centres = [at(0.1), at(0.9)];
    let mut upper = vec![false; projected.len()];
    for _ in 0..SPLIT_ROUNDS {
        let boundary = 0.5 * (centres[0] + centres[1]);
        upper.iter_mut().zip(&projected).for_each(|(upper, value)| *upper = *value > boundary);
        let mean_of = |side: bool| {
            let (sum, count) = projected
                .iter()
                .zip(&upper)
                .filter(|(_, upper)| **upper == side)
                .fold((0.0, 0usize), |(sum, count), (value, _)| (sum + value, count + 1));
            (count > 0).then(|| sum / count as f64)
        };
        let next = [mean_of(false).unwrap_or(centres[0]), mean_of(true).unwrap_or(centres[1])];
        if next == centres {
            break;
        }
        centres = next;
    }
    let mut parts = [vec![false; grid.width * grid.height], vec![false; grid.width * grid.height]];
    for (&cell, &upper) in region.iter().zip(&upper) {
        parts[usize::from(upper)][cell] = true;
    }
    parts
}

/// Finds the skin of the frame near where the face was: its mean Y, Cb, Cr (of the cells whose
/// neighbours are skin too), moving the box and the model with it. `None` when too little skin
/// is found.
fn follow(grid: &Grid<'_>, face: &mut (Area, Model), mask: &mut Vec<bool>) -> Option<(f64, f64, f64)> {
    let (area, model) = *face;
    let (box_width, box_height) = (area.x1 - area.x0 + 1.0, area.y1 - area.y0 + 1.0);
    let x0 = (area.x0 - MARGIN * box_width).max(0.0) as usize;
    let y0 = (area.y0 - MARGIN * box_height).max(0.0) as usize;
    let x1 = ((area.x1 + MARGIN * box_width) as usize).min(grid.width - 1);
    let y1 = ((area.y1 + MARGIN * box_height) as usize).min(grid.height - 1);
    let (width, height) = (x1 - x0 + 1, y1 - y0 + 1);
    mask.clear();
    mask.resize(width * height, false);
    for y in 0..height {
        for x in 0..width {
            let (luma, cb, cr) = grid.cell(x0 + x, y0 + y);
            mask[y * width + x] = (Y_RANGE.0..=Y_RANGE.1).contains(&luma) && model.matches(luma, cb, cr);
        }
    }
    let (mut sum_y, mut sum_cb, mut sum_cr, mut count) = (0.0, 0.0, 0.0, 0usize);
    let (mut sum_x, mut sum_yy, mut sum_xx, mut sum_row, mut skin_cells) = (0.0, 0.0, 0.0, 0.0, 0usize);
    let (mut sum_u, mut sum_v, mut u_sq, mut v_sq) = (0.0, 0.0, 0.0, 0.0);
    for y in 1..height.saturating_sub(1) {
        for x in 1..width.saturating_sub(1) {
            let at = y * width + x;
            if !mask[at] {
                continue;
            }
            skin_cells += 1;
            let (fx, fy) = (x as f64, y as f64);
            sum_x += fx;
            sum_row += fy;
            sum_xx += fx * fx;
            sum_yy += fy * fy;
            if mask[at - 1] && mask[at + 1] && mask[at - width] && mask[at + width] {
                let (luma, cb, cr) = grid.cell(x0 + x, y0 + y);
                sum_y += luma;
                sum_cb += cb;
                sum_cr += cr;
                let (u, v) = relative_chroma(luma, cb, cr);
                sum_u += u;
                sum_v += v;
                u_sq += u * u;
                v_sq += v * v;
                count += 1;
            }
        }
    }
    let min_cells = ((MIN_FACE_SHARE * 0.5) * (grid.width * grid.height) as f64).max(4.0) as usize;
    if count < min_cells {
        return None;
    }
    // The box moves to the skin found: its centre and about two spreads each way.
    let n = skin_cells as f64;
    let (mean_x, mean_y) = (sum_x / n, sum_row / n);
    let (spread_x, spread_y) =
        ((sum_xx / n - mean_x * mean_x).max(0.0).sqrt(), (sum_yy / n - mean_y * mean_y).max(0.0).sqrt());
    let (centre_x, centre_y) = (x0 as f64 + mean_x, y0 as f64 + mean_y);
    let (half_x, half_y) = ((1.8 * spread_x).max(2.0), (1.8 * spread_y).max(2.0));
    face.0 = Area { x0: centre_x - half_x, x1: centre_x + half_x, y0: centre_y - half_y, y1: centre_y + half_y };
    let count_f = count as f64;
    let follow_model = |(mean, spread): (f64, f64), sum: f64, square: f64| {
        let new_mean = sum / count_f;
        let new_spread = (square / count_f - new_mean * new_mean).max(0.0).sqrt();
        (mean + MODEL_FOLLOW * (new_mean - mean), spread + MODEL_FOLLOW * (new_spread - spread))
    };
    face.1 = Model { u: follow_model(model.u, sum_u, u_sq), v: follow_model(model.v, sum_v, v_sq) };
    Some((sum_y / count_f, sum_cb / count_f, sum_cr / count_f))
}
