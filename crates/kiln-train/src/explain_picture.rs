//! The pictures of `kiln explain`: an image in grey beside one heat map per method (signed
//! maps blue for negative, white at 0, red for positive; saliency black to hot), labelled
//! with a tiny built-in font, one row per image.
use crate::explain::{ImageExplanation, Method};
use crate::png::RgbImage;

/// Each input pixel becomes a square of this many pixels (nearest neighbour).
pub const UPSCALE: usize = 4;
/// The font's pixels are drawn this many screen pixels wide.
const TEXT_SCALE: usize = 2;
/// Space between panels, and around the grid.
const GAP: usize = 6;
const BACKGROUND: [u8; 3] = [255, 255, 255];
const INK: [u8; 3] = [0, 0, 0];

/// A 3x5 bitmap font: five rows per glyph, the low three bits of each row from left
/// (bit 2) to right (bit 0). Lower-case letters are drawn as capitals; a character
/// without a glyph is drawn as '?'.
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        ' ' => [0, 0, 0, 0, 0],
        '-' => [0, 0, 7, 0, 0],
        '/' => [1, 1, 2, 4, 4],
        '.' => [0, 0, 0, 0, 2],
        ':' => [0, 2, 0, 2, 0],
        '%' => [5, 1, 2, 4, 5],
        '=' => [0, 7, 0, 7, 0],
        '*' => [0, 5, 2, 5, 0],
        '#' => [5, 7, 5, 7, 5],
        _ => [7, 1, 2, 0, 2],
    }
}

/// Width in pixels of `text` drawn by [`draw_text`].
pub fn text_width(text: &str) -> usize {
    text.chars().count() * 4 * TEXT_SCALE
}

/// Height in pixels of one line of text.
pub fn text_height() -> usize {
    5 * TEXT_SCALE
}

/// Draw `text` with its top-left corner at (`x`, `y`).
pub fn draw_text(picture: &mut RgbImage, text: &str, x: usize, y: usize, colour: [u8; 3]) {
    for (i, c) in text.chars().enumerate() {
        let left = x + i * 4 * TEXT_SCALE;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    for dy in 0..TEXT_SCALE {
                        for dx in 0..TEXT_SCALE {
                            picture.set(left + col * TEXT_SCALE + dx, y + row * TEXT_SCALE + dy, colour);
                        }
                    }
                }
            }
        }
    }
}

/// The (height, width) an attribution of a sample of `shape` is drawn at, and its
/// channels: `[C, H, W]` as it is, a flat `[n]` as the square image it was flattened from
/// (MNIST's 784 = 28x28) or else one row.
pub fn picture_shape(shape: &[usize]) -> (usize, usize, usize) {
    match *shape {
        [c, h, w] => (c, h, w),
        [n] => {
            let side = (n as f64).sqrt().round() as usize;
            if side * side == n { (1, side, side) } else { (1, 1, n) }
        }
        _ => (1, 1, shape.iter().product()),
    }
}

/// One value per pixel of `values` (`channels` planes of `pixels`): the sum over
/// channels for a signed attribution, the largest value (saliency's max |g|) otherwise,
/// the mean for the image itself.
fn per_pixel(values: &[f32], channels: usize, pixels: usize, reduce: fn(&[f32]) -> f32) -> Vec<f32> {
    (0..pixels).map(|p| reduce(&(0..channels).map(|c| values[c * pixels + p]).collect::<Vec<_>>())).collect()
}

/// A picture of `height` x `width` values, each mapped to a colour by `colour`.
fn painted(values: &[f32], height: usize, width: usize, colour: impl Fn(f32) -> [u8; 3]) -> RgbImage {
    let mut picture = RgbImage::filled(width, height, BACKGROUND);
    for (p, &v) in values.iter().enumerate().take(height * width) {
        picture.set(p % width, p / width, colour(v));
    }
    picture
}

fn channel(t: f32) -> u8 {
    (t.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// The image (one sample in the model's input space) in grey, its own minimum black and
/// maximum white.
pub fn grey_image(image: &[f32], shape: &[usize]) -> RgbImage {
    let (c, h, w) = picture_shape(shape);
    let grey = per_pixel(image, c, h * w, |v| v.iter().sum::<f32>() / v.len().max(1) as f32);
    let (lo, hi) = grey.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    painted(&grey, h, w, |v| [channel((v - lo) / span); 3])
}

/// The heat map of one attribution: a signed one is scaled by its largest magnitude,
/// blue (negative) through white (0) to red (positive); an unsigned one black (0) to hot
/// (its maximum): red, then yellow, then white.
pub fn heat_map(values: &[f32], shape: &[usize], signed: bool) -> RgbImage {
    let (c, h, w) = picture_shape(shape);
    let reduce: fn(&[f32]) -> f32 = if signed { |v| v.iter().sum() } else { |v| v.iter().fold(0.0f32, |m, &x| m.max(x)) };
    let map = per_pixel(values, c, h * w, reduce);
    let largest = map.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    let scale = if largest > 0.0 && largest.is_finite() { largest } else { 1.0 };
    if signed {
        painted(&map, h, w, |v| {
            let t = v / scale;
            let fade = channel(1.0 - t.abs());
            if t >= 0.0 { [255, fade, fade] } else { [fade, fade, 255] }
        })
    } else {
        painted(&map, h, w, |v| {
            let t = v / scale;
            [channel(3.0 * t), channel(3.0 * t - 1.0), channel(3.0 * t - 2.0)]
        })
    }
}

/// One row of the grid: what is written above it and its explanation.
pub struct GridRow<'a> {
    /// The line above the row ("#3 TRUE 7 PRED 7 99.8%").
    pub caption: String,
    /// The image in the model's input space.
    pub image: &'a [f32],
    /// Its attributions.
    pub explanation: &'a ImageExplanation,
}

/// The grid: a heading line, then per row a caption and the image beside one heat map
/// per method of `methods`, every panel upscaled [`UPSCALE`] times.
pub fn grid(rows: &[GridRow], methods: &[Method], shape: &[usize]) -> RgbImage {
    let (_, h, w) = picture_shape(shape);
    let (panel_w, panel_h) = (w * UPSCALE, h * UPSCALE);
    let columns = 1 + methods.len();
    let line = text_height() + GAP;
    let headings: Vec<&str> = std::iter::once("IMAGE").chain(methods.iter().map(|m| m.heading())).collect();
    let column_w = headings.iter().map(|t| text_width(t)).max().unwrap_or(0).max(panel_w);
    let captions = rows.iter().map(|r| text_width(&r.caption)).max().unwrap_or(0);
    let width = (GAP + columns * (column_w + GAP)).max(2 * GAP + captions);
    let row_h = line + panel_h + GAP;
    let mut picture = RgbImage::filled(width, GAP + line + rows.len() * row_h, BACKGROUND);
    for (i, heading) in headings.iter().enumerate() {
        draw_text(&mut picture, heading, GAP + i * (column_w + GAP), GAP, INK);
    }
    for (r, row) in rows.iter().enumerate() {
        let top = GAP + line + r * row_h;
        draw_text(&mut picture, &row.caption, GAP, top, INK);
        let mut panels = vec![grey_image(row.image, shape)];
        for &method in methods {
            match row.explanation.attribution(method) {
                Some(values) => panels.push(heat_map(values, shape, method.is_signed())),
                None => panels.push(RgbImage::filled(w, h, BACKGROUND)),
            }
        }
        for (i, panel) in panels.iter().enumerate() {
            picture.paste(&panel.upscaled(UPSCALE), GAP + i * (column_w + GAP), top + line);
        }
    }
    picture
}
