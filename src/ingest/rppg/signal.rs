//! From a per-frame mean skin colour to a pulse and a breathing rate.
//!
//! Three ways to turn the colour trace into a pulse signal:
//! - GREEN: the green channel alone, normalised by its running mean. Simple, and at the mercy
//!   of every change of light or position.
//! - CHROM (de Haan & Jeanne 2013): two chrominance signals, `3R - 2G` and `1.5R + G - 1.5B`,
//!   combined so that the specular reflection (white light) cancels.
//! - POS (Wang et al. 2017): in short windows, each channel divided by its mean; the window is
//!   projected on the plane orthogonal to the skin tone (`G - B` and `G + B - 2R`) and the two
//!   projections are added in the ratio of their spreads, which cancels what changes the
//!   intensity of every channel alike (motion, shading, the light's brightness).
//!
//! The pulse rate is the highest spectral peak between 42 and 240 /min, located between bins by
//! fitting a parabola to the log magnitude; its quality is the spectral signal-to-noise ratio
//! (the energy around the peak and its first harmonic against the rest of the band). Breathing
//! shows as a slow modulation of the skin's brightness, of the pulse's amplitude and of its rate;
//! each is measured and the respiratory rate is given only when they agree.

use std::sync::Arc;

use rustfft::FftPlanner;
use rustfft::num_complex::Complex;

/// The band of possible pulse rates, Hz (42 to 240 /min).
pub const PULSE_BAND: (f64, f64) = (0.7, 4.0);
/// The band of possible breathing rates, Hz (6 to 42 /min).
pub const BREATHING_BAND: (f64, f64) = (0.1, 0.7);
/// POS and CHROM window: 1.6 s, about two beats at the slowest pulse.
const WINDOW_SECONDS: f64 = 1.6;

/// How a pulse signal is made from the colour trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Pos,
    Chrom,
    Green,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Pos => "POS",
            Method::Chrom => "CHROM",
            Method::Green => "GREEN",
        }
    }

    pub fn parse(name: &str) -> Option<Method> {
        [Method::Pos, Method::Chrom, Method::Green].into_iter().find(|method| method.name().eq_ignore_ascii_case(name))
    }
}

/// The pulse signal of an evenly sampled colour trace (`rate` samples per second), band-passed
/// to the pulse band.
pub fn pulse_signal(rgb: &[[f64; 3]], rate: f64, method: Method) -> Vec<f64> {
    let raw = match method {
        Method::Pos => pos(rgb, rate),
        Method::Chrom => chrom(rgb, rate),
        Method::Green => green(rgb, rate),
    };
    band_pass(&raw, rate, PULSE_BAND)
}

fn window_length(rate: f64, samples: usize) -> usize {
    ((WINDOW_SECONDS * rate).ceil() as usize).clamp(2, samples.max(2))
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() { 0.0 } else { values.iter().sum::<f64>() / values.len() as f64 }
}

fn std_dev(values: &[f64]) -> f64 {
    let mean = mean(values);
    (values.iter().map(|value| (value - mean).powi(2)).sum::<f64>() / values.len().max(1) as f64).sqrt()
}

/// POS, Algorithm 1 of Wang et al. 2017: overlap-added projections of temporally normalised
/// windows.
fn pos(rgb: &[[f64; 3]], rate: f64) -> Vec<f64> {
    let samples = rgb.len();
    let length = window_length(rate, samples);
    let mut pulse = vec![0.0; samples];
    let (mut s1, mut s2, mut h) = (vec![0.0; length], vec![0.0; length], vec![0.0; length]);
    for end in length..=samples {
        let window = &rgb[end - length..end];
        let means: [f64; 3] =
            std::array::from_fn(|c| window.iter().map(|sample| sample[c]).sum::<f64>() / length as f64);
        if means.iter().any(|&m| m <= 0.0) {
            continue;
        }
        for (index, sample) in window.iter().enumerate() {
            let (r, g, b) = (sample[0] / means[0], sample[1] / means[1], sample[2] / means[2]);
            s1[index] = g - b;
            s2[index] = g + b - 2.0 * r;
        }
        let spread2 = std_dev(&s2);
        let alpha = if spread2 > 0.0 { std_dev(&s1) / spread2 } else { 0.0 };
        for index in 0..length {
            h[index] = s1[index] + alpha * s2[index];
        }
        let h_mean = mean(&h);
        for (index, value) in h.iter().enumerate() {
            pulse[end - length + index] += value - h_mean;
        }
    }
    pulse
}

/// CHROM: chrominance signals band-passed as a whole, combined per Hann-weighted half-overlapping
/// window with the ratio of their spreads, and overlap-added.
fn chrom(rgb: &[[f64; 3]], rate: f64) -> Vec<f64> {
    let samples = rgb.len();
    let normalised = normalise_by_running_mean(rgb, rate);
    let x: Vec<f64> = normalised.iter().map(|[r, g, _]| 3.0 * r - 2.0 * g).collect();
    let y: Vec<f64> = normalised.iter().map(|[r, g, b]| 1.5 * r + g - 1.5 * b).collect();
    let (x, y) = (band_pass(&x, rate, PULSE_BAND), band_pass(&y, rate, PULSE_BAND));
    let length = window_length(rate, samples);
    let step = (length / 2).max(1);
    let hann: Vec<f64> = (0..length)
        .map(|index| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * index as f64 / (length - 1).max(1) as f64).cos())
        .collect();
    let mut pulse = vec![0.0; samples];
    let mut start = 0;
    while start + length <= samples {
        let (xw, yw) = (&x[start..start + length], &y[start..start + length]);
        let spread_y = std_dev(yw);
        let alpha = if spread_y > 0.0 { std_dev(xw) / spread_y } else { 0.0 };
        let s: Vec<f64> = xw.iter().zip(yw).map(|(x, y)| x - alpha * y).collect();
        let s_mean = mean(&s);
        for index in 0..length {
            pulse[start + index] += (s[index] - s_mean) * hann[index];
        }
        start += step;
    }
    pulse
}

/// GREEN: the green channel relative to its running mean.
fn green(rgb: &[[f64; 3]], rate: f64) -> Vec<f64> {
    normalise_by_running_mean(rgb, rate).iter().map(|[_, g, _]| *g).collect()
}

/// Each channel divided by its mean over the surrounding second, minus one: slow changes of
/// light are removed, the pulse's relative change kept.
fn normalise_by_running_mean(rgb: &[[f64; 3]], rate: f64) -> Vec<[f64; 3]> {
    let half = ((rate / 2.0).round() as usize).max(1);
    let samples = rgb.len();
    // Prefix sums make every window's mean O(1).
    let mut prefix = vec![[0.0; 3]; samples + 1];
    for (index, sample) in rgb.iter().enumerate() {
        prefix[index + 1] = std::array::from_fn(|c| prefix[index][c] + sample[c]);
    }
    (0..samples)
        .map(|index| {
            let (from, to) = (index.saturating_sub(half), (index + half + 1).min(samples));
            std::array::from_fn(|c| {
                let local = (prefix[to][c] - prefix[from][c]) / (to - from) as f64;
                if local > 0.0 { rgb[index][c] / local - 1.0 } else { 0.0 }
            })
        })
        .collect()
}

/// Removes the mean and keeps the frequencies in `band` (Hz): a zero-phase filter in the
/// frequency domain, with cosine tapers a tenth of the band wide at both edges so that it does
/// not ring. The signal is mirrored at both ends first so that they do not wrap into each other.
pub fn band_pass(signal: &[f64], rate: f64, band: (f64, f64)) -> Vec<f64> {
    let samples = signal.len();
    if samples < 4 {
        return vec![0.0; samples];
    }
    let centre = mean(signal);
    let mut mirrored: Vec<f64> = Vec::with_capacity(samples * 2);
    mirrored.extend(signal.iter().map(|value| value - centre));
    mirrored.extend(signal.iter().rev().map(|value| value - centre));
    let length = mirrored.len();
    let fft = planner_forward(length);
    let mut spectrum: Vec<Complex<f64>> = mirrored.iter().map(|&value| Complex::new(value, 0.0)).collect();
    fft.process(&mut spectrum);
    let taper = (band.1 - band.0) * 0.1;
    for (bin, value) in spectrum.iter_mut().enumerate() {
        let folded = bin.min(length - bin);
        let frequency = folded as f64 * rate / length as f64;
        *value *= gain(frequency, band, taper);
    }
    planner_inverse(length).process(&mut spectrum);
    spectrum[..samples].iter().map(|value| value.re / length as f64).collect()
}

fn gain(frequency: f64, (low, high): (f64, f64), taper: f64) -> f64 {
    let edge = |distance: f64| 0.5 - 0.5 * (std::f64::consts::PI * distance / taper).cos();
    if frequency < low - taper || frequency > high + taper {
        0.0
    } else if frequency < low {
        edge(frequency - (low - taper))
    } else if frequency > high {
        edge(high + taper - frequency)
    } else {
        1.0
    }
}

fn planner_forward(length: usize) -> Arc<dyn rustfft::Fft<f64>> {
    FftPlanner::new().plan_fft_forward(length)
}

fn planner_inverse(length: usize) -> Arc<dyn rustfft::Fft<f64>> {
    FftPlanner::new().plan_fft_inverse(length)
}

/// A power spectrum of a signal: Hann-windowed and zero-padded to at least 16 times its length
/// (so that a peak's position can be read between the natural bins).
pub struct Spectrum {
    /// Power per bin, bins `resolution` Hz apart from 0.
    pub power: Vec<f64>,
    pub resolution: f64,
}

impl Spectrum {
    pub fn of(signal: &[f64], rate: f64) -> Spectrum {
        let length = (signal.len() * 16).max(4096).next_power_of_two();
        let centre = mean(signal);
        let last = (signal.len().max(2) - 1) as f64;
        let mut buffer: Vec<Complex<f64>> = vec![Complex::new(0.0, 0.0); length];
        for (index, value) in signal.iter().enumerate() {
            let window = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * index as f64 / last).cos();
            buffer[index] = Complex::new((value - centre) * window, 0.0);
        }
        planner_forward(length).process(&mut buffer);
        let power = buffer[..length / 2 + 1].iter().map(|value| value.norm_sqr()).collect();
        Spectrum { power, resolution: rate / length as f64 }
    }

    fn bin(&self, frequency: f64) -> usize {
        ((frequency / self.resolution).round() as usize).min(self.power.len() - 1)
    }

    /// The frequency of the highest peak in `band`, between bins (a parabola through the log
    /// power of the peak's bin and its neighbours), or `None` when the band is flat.
    pub fn peak(&self, band: (f64, f64)) -> Option<f64> {
        let (from, to) = (self.bin(band.0).max(1), self.bin(band.1).min(self.power.len() - 2));
        let best = (from..=to).max_by(|&a, &b| self.power[a].total_cmp(&self.power[b]))?;
        if self.power[best] <= 0.0 {
            return None;
        }
        let log = |bin: usize| self.power[bin].max(f64::MIN_POSITIVE).ln();
        let (left, centre, right) = (log(best - 1), log(best), log(best + 1));
        let curvature = left - 2.0 * centre + right;
        let shift = if curvature < 0.0 { (0.5 * (left - right) / curvature).clamp(-0.5, 0.5) } else { 0.0 };
        Some((best as f64 + shift) * self.resolution)
    }

    /// The centre of the power within `half_width` Hz of `frequency`: for a rate that wanders
    /// during the clip, nearer its mean than the highest bin is.
    pub fn centroid(&self, frequency: f64, half_width: f64) -> f64 {
        let (from, to) = (self.bin((frequency - half_width).max(0.0)), self.bin(frequency + half_width));
        let (mut weighted, mut total) = (0.0, 0.0);
        for bin in from..=to {
            weighted += bin as f64 * self.resolution * self.power[bin];
            total += self.power[bin];
        }
        if total > 0.0 { weighted / total } else { frequency }
    }

    /// The signal-to-noise ratio of a peak at `frequency`, dB: the power within `width` Hz of it
    /// and of its first harmonic (twice as wide), against the rest of `band`.
    pub fn snr(&self, frequency: f64, band: (f64, f64), width: f64) -> f64 {
        let (from, to) = (self.bin(band.0), self.bin(band.1));
        let (mut signal, mut noise) = (0.0, 0.0);
        for bin in from..=to {
            let f = bin as f64 * self.resolution;
            if (f - frequency).abs() <= width || (f - 2.0 * frequency).abs() <= 2.0 * width {
                signal += self.power[bin];
            } else {
                noise += self.power[bin];
            }
        }
        if noise <= 0.0 {
            return if signal > 0.0 { 60.0 } else { f64::NEG_INFINITY };
        }
        10.0 * (signal / noise).log10()
    }
}

/// A rate read from a spectrum, per minute, with the quality of its peak.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_minute: f64,
    pub snr_db: f64,
}

/// How far around the pulse's spectral peak its power is weighed to give the rate, Hz (5 /min
/// each way): the peak of a rate that wanders during the clip is broad.
const PEAK_HALF_WIDTH: f64 = 0.08;

/// The rate of a pulse signal (from [`pulse_signal`]) and the quality of its peak: the
/// power-weighted centre around the highest peak in the pulse band, and its spectral SNR.
pub fn pulse_rate(pulse: &[f64], rate: f64) -> Option<Rate> {
    let spectrum = Spectrum::of(pulse, rate);
    let frequency = spectrum.peak(PULSE_BAND)?;
    Some(Rate {
        per_minute: spectrum.centroid(frequency, PEAK_HALF_WIDTH) * 60.0,
        snr_db: spectrum.snr(frequency, PULSE_BAND, 0.1),
    })
}

/// Breathing, seen three ways, each a signal sampled at `rate`: the skin's brightness (green
/// relative to its mean, kept in the breathing band), the pulse's amplitude and its rate
/// (beat by beat, interpolated onto the samples).
pub fn breathing_signals(rgb: &[[f64; 3]], rate: f64, pulse: &[f64]) -> Vec<Vec<f64>> {
    let mut signals = Vec::new();
    let green: Vec<f64> = rgb.iter().map(|sample| sample[1]).collect();
    let green_mean = mean(&green);
    if green_mean > 0.0 {
        let relative: Vec<f64> = green.iter().map(|g| g / green_mean - 1.0).collect();
        signals.push(band_pass(&relative, rate, BREATHING_BAND));
    }
    let beats = beats(pulse, rate);
    if beats.len() >= 8 {
        let amplitude: Vec<(f64, f64)> = beats.iter().map(|beat| (beat.at, beat.amplitude)).collect();
        let interval: Vec<(f64, f64)> = beats.windows(2).map(|pair| (pair[1].at, pair[1].at - pair[0].at)).collect();
        for series in [amplitude, interval] {
            let resampled = interpolate(&series, pulse.len(), rate);
            signals.push(band_pass(&resampled, rate, BREATHING_BAND));
        }
    }
    signals
}

/// A beat of the pulse signal: when its peak was (seconds) and how high it rose above the
/// trough before it.
struct Beat {
    at: f64,
    amplitude: f64,
}

/// The beats of a band-passed pulse signal: local maxima at least a 240 /min beat apart,
/// each the highest within that distance.
fn beats(pulse: &[f64], rate: f64) -> Vec<Beat> {
    let gap = ((rate / PULSE_BAND.1).floor() as usize).max(1);
    let mut beats = Vec::new();
    let mut last_peak: Option<usize> = None;
    for index in 1..pulse.len().saturating_sub(1) {
        let (from, to) = (index.saturating_sub(gap), (index + gap + 1).min(pulse.len()));
        let is_peak = pulse[index] > 0.0 && pulse[from..to].iter().all(|&value| value <= pulse[index]);
        if !is_peak || last_peak.is_some_and(|last| index - last < gap) {
            continue;
        }
        let trough_from = last_peak.unwrap_or(from);
        let trough = pulse[trough_from..index].iter().copied().fold(f64::INFINITY, f64::min);
        if trough.is_finite() {
            beats.push(Beat { at: index as f64 / rate, amplitude: pulse[index] - trough });
        }
        last_peak = Some(index);
    }
    beats
}

/// A series of (time, value) points, linearly interpolated at every sample (held flat before the
/// first and after the last).
fn interpolate(points: &[(f64, f64)], samples: usize, rate: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(samples);
    let mut next = 0;
    for index in 0..samples {
        let t = index as f64 / rate;
        while next < points.len() && points[next].0 < t {
            next += 1;
        }
        let value = match (next.checked_sub(1).map(|at| points[at]), points.get(next)) {
            (Some((t0, v0)), Some(&(t1, v1))) if t1 > t0 => v0 + (v1 - v0) * (t - t0) / (t1 - t0),
            (Some((_, v0)), _) => v0,
            (None, Some(&(_, v1))) => v1,
            (None, None) => 0.0,
        };
        out.push(value);
    }
    out
}

/// Most a breathing estimate may differ from another to count as agreeing, /min.
const BREATHING_AGREEMENT: f64 = 3.0;
/// Least quality of a breathing signal's peak to take part, dB.
const BREATHING_MIN_SNR: f64 = -3.0;

/// The respiratory rate: the median of the breathing signals' rates when at least two agree
/// within [`BREATHING_AGREEMENT`]; `None` otherwise. Its quality is the best of theirs.
pub fn breathing_rate(signals: &[Vec<f64>], rate: f64) -> Option<Rate> {
    let mut rates: Vec<Rate> = signals
        .iter()
        .filter_map(|signal| {
            let spectrum = Spectrum::of(signal, rate);
            let frequency = spectrum.peak(BREATHING_BAND)?;
            let snr_db = spectrum.snr(frequency, BREATHING_BAND, 0.04);
            (snr_db >= BREATHING_MIN_SNR).then_some(Rate { per_minute: frequency * 60.0, snr_db })
        })
        .collect();
    rates.sort_by(|a, b| a.per_minute.total_cmp(&b.per_minute));
    // The largest group of rates that agree with each other.
    let mut best: &[Rate] = &[];
    for start in 0..rates.len() {
        let end = rates[start..]
            .iter()
            .position(|rate| rate.per_minute - rates[start].per_minute > BREATHING_AGREEMENT)
            .map_or(rates.len(), |offset| start + offset);
        if end - start > best.len() {
            best = &rates[start..end];
        }
    }
    if best.len() < 2 {
        return None;
    }
    let per_minute = if best.len() % 2 == 1 {
        best[best.len() / 2].per_minute
    } else {
        (best[best.len() / 2 - 1].per_minute + best[best.len() / 2].per_minute) / 2.0
    };
    let snr_db = best.iter().map(|rate| rate.snr_db).fold(f64::NEG_INFINITY, f64::max);
    Some(Rate { per_minute, snr_db })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(frequency: f64, rate: f64, seconds: f64) -> Vec<f64> {
        (0..(rate * seconds) as usize)
            .map(|index| (2.0 * std::f64::consts::PI * frequency * index as f64 / rate).sin())
            .collect()
    }

    #[test]
    fn a_peak_is_located_between_bins() {
        for bpm in [48.3, 61.7, 75.0, 92.4, 118.9, 171.2] {
            let signal = sine(bpm / 60.0, 30.0, 30.0);
            let found = Spectrum::of(&signal, 30.0).peak(PULSE_BAND).unwrap() * 60.0;
            assert!((found - bpm).abs() < 0.1, "{bpm} found as {found}");
        }
    }

    #[test]
    fn band_pass_keeps_the_band_and_removes_what_is_outside() {
        let rate = 30.0;
        let inside = sine(1.2, rate, 20.0);
        let outside: Vec<f64> =
            sine(0.1, rate, 20.0).iter().zip(sine(8.0, rate, 20.0)).map(|(a, b)| 3.0 * a + b).collect();
        let mixed: Vec<f64> = inside.iter().zip(&outside).map(|(a, b)| a + b + 5.0).collect();
        let filtered = band_pass(&mixed, rate, PULSE_BAND);
        // Away from the ends, what is left is the 1.2 Hz sine.
        let middle = 60..540;
        let error = middle.clone().map(|index| (filtered[index] - inside[index]).abs()).fold(0.0, f64::max);
        assert!(error < 0.1, "{error}");
    }

    #[test]
    fn a_clean_peak_has_a_high_snr_and_noise_a_low_one() {
        let rate = 30.0;
        let clean = Spectrum::of(&sine(1.25, rate, 30.0), rate);
        assert!(clean.snr(1.25, PULSE_BAND, 0.1) > 20.0);
        let mut state = 7u64;
        let noise: Vec<f64> = (0..900)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect();
        let noisy = Spectrum::of(&band_pass(&noise, rate, PULSE_BAND), rate);
        let peak = noisy.peak(PULSE_BAND).unwrap();
        assert!(noisy.snr(peak, PULSE_BAND, 0.1) < 0.0, "{}", noisy.snr(peak, PULSE_BAND, 0.1));
    }

    #[test]
    fn every_method_finds_a_pulse_in_a_clean_colour_trace() {
        let rate = 30.0;
        let rgb: Vec<[f64; 3]> = sine(1.3, rate, 30.0)
            .iter()
            .map(|p| [150.0 * (1.0 + 0.002 * p), 110.0 * (1.0 + 0.006 * p), 90.0 * (1.0 + 0.004 * p)])
            .collect();
        for method in [Method::Pos, Method::Chrom, Method::Green] {
            let found = pulse_rate(&pulse_signal(&rgb, rate, method), rate).unwrap();
            assert!((found.per_minute - 78.0).abs() < 0.3, "{method:?}: {found:?}");
            assert!(found.snr_db > 10.0, "{method:?}: {found:?}");
        }
    }
}
