//! Synthetic face videos with a known pulse and breathing, to measure rPPG against.
//!
//! The skin-reflection model of Wang et al. (2017): a pixel of skin is the light's colour times
//! its intensity times the skin's diffuse reflection, which the blood volume pulse modulates
//! (most in green), plus a specular (white) reflection; then sensor noise and 8-bit
//! quantisation. The pulse has a systolic peak and a dicrotic wave; its rate drifts slowly and
//! with breathing (respiratory sinus arrhythmia); breathing also modulates the pulse's amplitude
//! and the skin's brightness. Conditions add what makes rPPG hard:
//! - motion: the head moves by a few pixels, its shading changes with it (nodding, talking:
//!   brightness changes in the pulse's own band, stronger than the pulse) and so does the
//!   specular reflection;
//! - illumination: the light drifts and steps (a cloud, a lamp switched on);
//! - coloured light: a tinted illuminant (what white balance leaves of a warm lamp, daylight or
//!   a fluorescent tube);
//! - no pulse: everything but the pulse;
//! - warm background: a cream, light-oak or sand wall all around the face, inside the broad
//!   chroma range that finds skin, so that the face and the wall make one skin-coloured region.
//!
//! The scene (background, face with hair, eyes and mouth, skin texture) is laid out once per
//! clip; each frame only moves the face and scales the colours.

use std::io::Write;

use super::y4m;
use crate::random::Random;

/// What makes a clip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipOptions {
    pub seed: u64,
    pub seconds: f64,
    pub fps: u32,
    pub width: usize,
    pub height: usize,
    pub pulse: bool,
    pub motion: bool,
    pub illumination: bool,
    pub coloured_light: bool,
    pub warm_background: bool,
}

impl ClipOptions {
    /// A clean 30-second clip at 30 frames per second.
    pub fn clean(seed: u64, width: usize, height: usize) -> ClipOptions {
        ClipOptions {
            seed,
            seconds: 30.0,
            fps: 30,
            width,
            height,
            pulse: true,
            motion: false,
            illumination: false,
            coloured_light: false,
            warm_background: false,
        }
    }
}

/// The clip's true rates, per minute: the pulse's mean over the clip (beats / duration) and
/// the breathing rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Truth {
    pub heart_rate: f64,
    pub respiratory_rate: f64,
}

/// What a pixel of the face patch is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Outside,
    Skin,
    Other,
}

/// A clip's fixed layout and its physiology, frame by frame.
pub struct Clip {
    options: ClipOptions,
    background: Vec<[f32; 3]>,
    /// The face patch: its size, where its top-left corner sits at rest, and per pixel what it
    /// is and its colour before light.
    patch_width: usize,
    patch_height: usize,
    patch_origin: (f64, f64),
    parts: Vec<Part>,
    colours: Vec<[f32; 3]>,
    /// Per frame: the pulse's relative change per channel, brightness factors and motion.
    frames: Vec<FrameState>,
    light: [f64; 3],
    noise: f64,
    random: Random,
    truth: Truth,
}

#[derive(Clone, Copy)]
struct FrameState {
    /// Relative change of the skin's diffuse reflection per channel (pulse and breathing).
    skin: [f64; 3],
    /// The light's intensity (illumination changes).
    intensity: f64,
    /// Shading of the face as it moves.
    shading: f64,
    /// Specular reflection, a share of the light.
    specular: f64,
    offset: (i64, i64),
}

/// The blood volume pulse's relative strength per channel (green strongest).
const PULSE_SIGNATURE: [f64; 3] = [0.33, 0.77, 0.53];
/// Skin tones (8-bit sRGB) clips draw from.
const SKIN_TONES: [[f64; 3]; 5] =
    [[226.0, 182.0, 160.0], [205.0, 150.0, 122.0], [176.0, 120.0, 92.0], [134.0, 90.0, 66.0], [96.0, 64.0, 48.0]];

impl Clip {
    pub fn new(options: ClipOptions) -> Clip {
        let mut random = Random::new(options.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1));
        let (width, height) = (options.width, options.height);
        let frame_count = (options.seconds * f64::from(options.fps)).round() as usize;
        let rate = f64::from(options.fps);

        // The scene.
        // Walls and curtains in greys, greens and blues: not skin-coloured.
        let background_colour = [
            [random.between(90.0, 140.0); 3],
            [random.between(40.0, 80.0), random.between(90.0, 140.0), random.between(60.0, 100.0)],
            [random.between(30.0, 70.0), random.between(60.0, 100.0), random.between(110.0, 170.0)],
        ][random.below(3)];
        // Cream, light oak or sand: inside the broad skin range of chroma that finds faces, yet
        // not the colour of skin (a wall of the skin's own chroma is not told from it by colour).
        // Drawn only for this condition, so that the other clips of a seed stay as they were.
        let background_colour = if options.warm_background {
            let warm = [[215.0, 190.0, 150.0], [200.0, 160.0, 105.0], [185.0, 160.0, 125.0]][random.below(3)];
            let scale = random.between(0.9, 1.1);
            warm.map(|c: f64| c * scale)
        } else {
            background_colour
        };
        let background: Vec<[f32; 3]> = (0..width * height)
            .map(|_| {
                let grain = random.between(-8.0, 8.0);
                background_colour.map(|c| (c + grain) as f32)
            })
            .collect();
        let tone = SKIN_TONES[random.below(SKIN_TONES.len())];
        let tone_scale = random.between(0.92, 1.05);
        let radius_y = 0.30 * height as f64;
        let radius_x = 0.72 * radius_y;
        let (patch_width, patch_height) = ((2.0 * radius_x).ceil() as usize + 2, (2.0 * radius_y).ceil() as usize + 2);
        let centre = (patch_width as f64 / 2.0, patch_height as f64 / 2.0);
        let mut parts = vec![Part::Outside; patch_width * patch_height];
        let mut colours = vec![[0.0f32; 3]; patch_width * patch_height];
        let inside = |x: f64, y: f64, (cx, cy): (f64, f64), (rx, ry): (f64, f64)| {
            ((x - cx) / rx).powi(2) + ((y - cy) / ry).powi(2) <= 1.0
        };
        for py in 0..patch_height {
            for px in 0..patch_width {
                let (x, y) = (px as f64 + 0.5, py as f64 + 0.5);
                if !inside(x, y, centre, (radius_x, radius_y)) {
                    continue;
                }
                let at = py * patch_width + px;
                let eye = |side: f64| {
                    inside(
                        x,
                        y,
                        (centre.0 + side * 0.38 * radius_x, centre.1 - 0.12 * radius_y),
                        (0.17 * radius_x, 0.07 * radius_y),
                    )
                };
                let (part, colour) = if y < centre.1 - 0.55 * radius_y {
                    (Part::Other, [45.0, 32.0, 26.0])
                } else if eye(-1.0) || eye(1.0) {
                    (Part::Other, [60.0, 50.0, 45.0])
                } else if inside(x, y, (centre.0, centre.1 + 0.52 * radius_y), (0.32 * radius_x, 0.07 * radius_y)) {
                    (Part::Other, [150.0, 75.0, 75.0])
                } else {
                    let texture = random.between(0.97, 1.03);
                    (Part::Skin, tone.map(|c| c * tone_scale * texture))
                };
                parts[at] = part;
                colours[at] = colour.map(|c| c as f32);
            }
        }
        let patch_origin = (width as f64 / 2.0 - centre.0, 0.52 * height as f64 - centre.1);

        // Physiology.
        let heart_rate = random.between(55.0, 110.0);
        let drift = (random.between(0.0, 3.0), random.between(15.0, 40.0), random.between(0.0, 6.3));
        let breathing_rate = random.between(10.0, 22.0);
        let breathing_phase = random.between(0.0, 6.3);
        let arrhythmia = random.between(0.5, 2.5);
        let amplitude = if options.pulse { random.between(0.005, 0.011) } else { 0.0 };
        let (pulse_mean, pulse_spread) = waveform_moments();

        // Conditions.
        let light = if options.coloured_light {
            // Tints that a camera's white balance leaves: warm lamps, daylight, fluorescent.
            [[1.0, 0.88, 0.72], [0.86, 0.96, 1.08], [0.92, 1.04, 0.88], [1.05, 0.88, 1.0]][random.below(4)]
        } else {
            [1.0, 1.0, 1.0]
        };
        let steps: Vec<(f64, f64)> = if options.illumination {
            (0..1 + random.below(3))
                .map(|_| (random.between(2.0, options.seconds - 2.0), random.between(0.78, 1.22)))
                .collect()
        } else {
            Vec::new()
        };
        let ramp = if options.illumination { random.between(-0.15, 0.15) } else { 0.0 };
        let wobble =
            if options.illumination { (random.between(0.02, 0.06), random.between(0.05, 0.2)) } else { (0.0, 0.0) };
        // Motion: head sway (slow, pixels) and nods/talking (in the pulse band, shading).
        let sway: Vec<(f64, f64, f64)> =
            (0..3).map(|_| (random.between(0.05, 0.6), random.between(0.0, 6.3), random.between(0.3, 1.0))).collect();
        let nods: Vec<(f64, f64, f64)> =
            (0..2).map(|_| (random.between(0.8, 2.2), random.between(0.0, 6.3), random.between(0.008, 0.02))).collect();
        let sway_pixels = 0.06 * radius_y;

        let mut frames = Vec::with_capacity(frame_count);
        let mut phase = random.unit();
        let mut previous_phase_total = 0.0;
        let two_pi = 2.0 * std::f64::consts::PI;
        for index in 0..frame_count {
            let t = index as f64 / rate;
            let breathing = (two_pi * breathing_rate / 60.0 * t + breathing_phase).sin();
            let rate_now = heart_rate + drift.0 * (two_pi * t / drift.1 + drift.2).sin() + arrhythmia * breathing;
            if index > 0 {
                let step = rate_now / 60.0 / rate;
                phase += step;
                previous_phase_total += step;
            }
            let wave = (waveform(phase.fract()) - pulse_mean) / pulse_spread;
            let pulse = amplitude * (1.0 + 0.15 * breathing) * wave;
            let brightness = 0.002 * breathing;
            let skin = std::array::from_fn(|c| pulse * PULSE_SIGNATURE[c] / PULSE_SIGNATURE[1] + brightness);
            let mut intensity = 1.0 + ramp * t / options.seconds + wobble.0 * (two_pi * wobble.1 * t).sin();
            for &(at, factor) in &steps {
                if t >= at {
                    intensity *= factor;
                }
            }
            let (mut shading, mut specular, mut offset) = (1.0, 0.0, (0.0, 0.0));
            if options.motion {
                for &(frequency, phase0, weight) in &sway {
                    offset.0 += sway_pixels * weight * (two_pi * frequency * t + phase0).sin();
                    offset.1 += 0.5 * sway_pixels * weight * (two_pi * frequency * t + phase0 + 1.0).cos();
                }
                for &(frequency, phase0, depth) in &nods {
                    let swing = (two_pi * frequency * t + phase0).sin();
                    shading += depth * swing;
                    specular += 0.5 * depth * swing.abs();
                }
            }
            frames.push(FrameState {
                skin,
                intensity,
                shading,
                specular,
                offset: (offset.0.round() as i64, offset.1.round() as i64),
            });
        }
        let truth = Truth {
            heart_rate: previous_phase_total / ((frame_count.max(2) - 1) as f64 / rate) * 60.0,
            respiratory_rate: breathing_rate,
        };
        Clip {
            options,
            background,
            patch_width,
            patch_height,
            patch_origin,
            parts,
            colours,
            frames,
            light,
            noise: random.between(1.0, 2.5),
            random,
            truth,
        }
    }

    pub fn truth(&self) -> Truth {
        self.truth
    }

    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// Frame `index` as 8-bit RGB pixels, row by row (`out` is resized). Also returns the true
    /// mean colour of the frame's skin (what a device that knows where the skin is would send).
    pub fn render(&mut self, index: usize, out: &mut Vec<[u8; 3]>) -> [f64; 3] {
        let (width, height) = (self.options.width, self.options.height);
        let state = self.frames[index];
        out.resize(width * height, [0; 3]);
        let light: [f64; 3] = self.light.map(|c| c * state.intensity);
        let background_gain: [f32; 3] = light.map(|c| c as f32);
        let other_gain: [f32; 3] = light.map(|c| (c * state.shading) as f32);
        let skin_gain: [f32; 3] = std::array::from_fn(|c| (light[c] * state.shading * (1.0 + state.skin[c])) as f32);
        let shine: [f32; 3] = light.map(|c| (c * state.specular * 255.0) as f32);
        let noise = self.noise as f32;
        let left = self.patch_origin.0.round() as i64 + state.offset.0;
        let top = self.patch_origin.1.round() as i64 + state.offset.1;
        let (mut skin_sum, mut skin_count) = ([0.0f64; 3], 0usize);
        for y in 0..height {
            let py = y as i64 - top;
            for x in 0..width {
                let px = x as i64 - left;
                let at = y * width + x;
                let (part, base) =
                    if (0..self.patch_width as i64).contains(&px) && (0..self.patch_height as i64).contains(&py) {
                        let patch_at = py as usize * self.patch_width + px as usize;
                        (self.parts[patch_at], self.colours[patch_at])
                    } else {
                        (Part::Outside, [0.0; 3])
                    };
                let pixel: [f32; 3] = match part {
                    Part::Outside => std::array::from_fn(|c| self.background[at][c] * background_gain[c]),
                    Part::Other => std::array::from_fn(|c| base[c] * other_gain[c]),
                    Part::Skin => std::array::from_fn(|c| base[c] * skin_gain[c] + shine[c]),
                };
                let bits = self.random.next_u64();
                let quantised: [u8; 3] = std::array::from_fn(|c| {
                    // Sensor noise: near-normal (the sum of four uniform draws), per channel.
                    let word = (bits >> (c * 21)) & 0x1F_FFFF;
                    let draws = (word & 0x1F) + ((word >> 5) & 0x1F) + ((word >> 10) & 0x1F) + ((word >> 15) & 0x1F);
                    let gaussian = (draws as f32 - 62.0) / 18.47;
                    (pixel[c] + noise * gaussian).round().clamp(0.0, 255.0) as u8
                });
                if part == Part::Skin {
                    for c in 0..3 {
                        skin_sum[c] += f64::from(quantised[c]);
                    }
                    skin_count += 1;
                }
                out[at] = quantised;
            }
        }
        skin_sum.map(|sum| sum / skin_count.max(1) as f64)
    }

    /// Writes the whole clip as a Y4M video.
    pub fn write_y4m(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        let (width, height) = (self.options.width, self.options.height);
        y4m::write_header(out, width, height, self.options.fps)?;
        let mut pixels = Vec::new();
        for index in 0..self.frames.len() {
            self.render(index, &mut pixels);
            y4m::write_frame(out, width, height, &pixels)?;
        }
        Ok(())
    }

    /// The clip as a skin-colour trace (what a device computing it would send), with
    /// timestamps jittered by up to 3 ms as a browser's are.
    pub fn trace(&mut self) -> Vec<(f64, [f64; 3])> {
        let mut pixels = Vec::new();
        let rate = f64::from(self.options.fps);
        (0..self.frames.len())
            .map(|index| {
                let colour = self.render(index, &mut pixels);
                let jitter = self.random.between(-0.003, 0.003);
                ((index as f64 / rate + jitter).max(0.0), colour)
            })
            .collect()
    }
}

/// One beat of the pulse, phase 0 to 1: the systolic peak and, after the dicrotic notch, the
/// smaller diastolic wave (Gaussians on the circle).
fn waveform(phase: f64) -> f64 {
    let bump = |centre: f64, width: f64| {
        let distance = (phase - centre + 0.5).rem_euclid(1.0) - 0.5;
        (-0.5 * (distance / width).powi(2)).exp()
    };
    bump(0.18, 0.07) + 0.35 * bump(0.48, 0.09)
}

/// The waveform's mean and standard deviation over a beat.
fn waveform_moments() -> (f64, f64) {
    let samples: Vec<f64> = (0..1000).map(|index| waveform(index as f64 / 1000.0)).collect();
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let variance = samples.iter().map(|value| (value - mean).powi(2)).sum::<f64>() / samples.len() as f64;
    (mean, variance.sqrt())
}
