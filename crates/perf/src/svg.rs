//! Line plots as plain SVG (a few hundred bytes of markup per series; no plotting crate): a
//! logarithmic (base 2) or linear x axis, a linear y axis from 0, a legend, and optional
//! horizontal reference lines (the baselines).

use std::fmt::Write;

/// One line of points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (x, y) points, drawn in order.
    pub points: Vec<(f64, f64)>,
    /// Dashed (e.g. the syscall back end).
    pub dashed: bool,
}

/// A plot.
#[derive(Debug, Clone, Default)]
pub struct Plot {
    /// Title.
    pub title: String,
    /// x axis label.
    pub x_label: String,
    /// y axis label.
    pub y_label: String,
    /// x axis in powers of 2, labelled as sizes (64 B, 4 KiB, 1 MiB).
    pub x_log2_sizes: bool,
    /// The lines.
    pub series: Vec<Series>,
    /// Horizontal reference lines: (label, y).
    pub hlines: Vec<(String, f64)>,
}

const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];
const W: f64 = 760.0;
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// "64 B", "4 KiB", "1 MiB".
pub fn size_label(bytes: f64) -> String {
    let b = bytes.round() as u64;
    if b >= 1 << 20 && b % (1 << 20) == 0 {
        format!("{} MiB", b >> 20)
    } else if b >= 1 << 10 && b % (1 << 10) == 0 {
        format!("{} KiB", b >> 10)
    } else {
        format!("{b} B")
    }
}

/// A "nice" step for about `n` ticks over `0..max`.
fn step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

impl Plot {
    /// The SVG document.
    pub fn render(&self) -> String {
        let xs: Vec<f64> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .filter(|x| x.is_finite() && (!self.x_log2_sizes || *x > 0.0))
            .collect();
        let ys = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .chain(self.hlines.iter().map(|h| h.1))
            .filter(|y| y.is_finite());
        let tx = |x: f64| {
            if self.x_log2_sizes {
                x.max(1.0).log2()
            } else {
                x
            }
        };
        let (mut x0, mut x1) = xs.iter().fold((f64::MAX, f64::MIN), |(a, b), x| {
            (a.min(tx(*x)), b.max(tx(*x)))
        });
        if x0 > x1 {
            (x0, x1) = (0.0, 1.0);
        }
        if x1 - x0 < 1e-9 {
            x1 = x0 + 1.0;
        }
        let ymax = ys.fold(0.0f64, f64::max);
        let ystep = step(if ymax > 0.0 { ymax * 1.05 } else { 1.0 }, 6.0);
        let y1 = ((if ymax > 0.0 { ymax * 1.05 } else { 1.0 }) / ystep).ceil() * ystep;
        let pw = W - LEFT - RIGHT;
        let ph = H - TOP - BOTTOM;
        let px = |x: f64| LEFT + (tx(x) - x0) / (x1 - x0) * pw;
        let py = |y: f64| TOP + ph - (y / y1) * ph;
        let mut o = String::new();
        let _ = writeln!(
            o,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let _ = writeln!(
            o,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            LEFT + pw / 2.0,
            esc(&self.title)
        );
        // Grid and y ticks.
        let mut y = 0.0;
        while y <= y1 + ystep / 2.0 {
            let yy = py(y);
            let _ = writeln!(
                o,
                r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + pw,
                LEFT - 6.0,
                yy + 4.0,
                trim(y)
            );
            y += ystep;
        }
        // x ticks.
        let ticks: Vec<f64> = if self.x_log2_sizes {
            let mut v = Vec::new();
            let mut e = x0.ceil();
            let every = if x1 - x0 > 12.0 { 2.0 } else { 1.0 };
            while e <= x1 + 1e-9 {
                v.push(2f64.powf(e));
                e += every;
            }
            v
        } else {
            let s = step(x1 - x0, 6.0);
            let mut v = Vec::new();
            let mut x = (x0 / s).ceil() * s;
            while x <= x1 + 1e-9 {
                v.push(x);
                x += s;
            }
            v
        };
        for t in ticks {
            let xx = px(t);
            let label = if self.x_log2_sizes {
                size_label(t)
            } else {
                trim(t)
            };
            let _ = writeln!(
                o,
                r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="#eee"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + ph,
                TOP + ph + 16.0,
                esc(&label)
            );
        }
        let _ = writeln!(
            o,
            r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
        );
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            H - 12.0,
            esc(&self.x_label)
        );
        let _ = writeln!(
            o,
            r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
            TOP + ph / 2.0,
            TOP + ph / 2.0,
            esc(&self.y_label)
        );
        let mut legend = 0usize;
        let mut entry = |o: &mut String, name: &str, colour: &str, dash: &str| {
            let ly = TOP + 10.0 + legend as f64 * 18.0;
            let lx = LEFT + pw + 12.0;
            let _ = writeln!(
                o,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
                lx + 24.0,
                lx + 30.0,
                ly + 4.0,
                esc(name)
            );
            legend += 1;
        };
        for (i, (name, y)) in self.hlines.iter().enumerate() {
            if !y.is_finite() {
                continue;
            }
            let c = ["#555", "#999", "#bbb"][i % 3];
            let dash = r#" stroke-dasharray="2 3""#;
            let _ = writeln!(
                o,
                r#"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{c}" stroke-width="1.5"{dash}/>"#,
                py(*y),
                LEFT + pw,
                py(*y)
            );
            entry(&mut o, name, c, dash);
        }
        for (i, s) in self.series.iter().enumerate() {
            let c = COLOURS[i % COLOURS.len()];
            let dash = if s.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let pts: Vec<String> = s
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && (!self.x_log2_sizes || *x > 0.0))
                .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
                .collect();
            if !pts.is_empty() {
                let _ = writeln!(
                    o,
                    r#"<polyline fill="none" stroke="{c}" stroke-width="2"{dash} points="{}"/>"#,
                    pts.join(" ")
                );
                for p in &pts {
                    let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                    let _ = writeln!(o, r#"<circle cx="{x}" cy="{y}" r="2.5" fill="{c}"/>"#);
                }
            }
            entry(&mut o, &s.name, c, dash);
        }
        o.push_str("</svg>\n");
        o
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_well_formed_svg_with_every_series() {
        let p = Plot {
            title: "a <b> & c".into(),
            x_label: "size".into(),
            y_label: "Gbit/s".into(),
            x_log2_sizes: true,
            series: vec![
                Series {
                    name: "write uring".into(),
                    points: vec![(64.0, 1.0), (1048576.0, 20.0)],
                    dashed: false,
                },
                Series {
                    name: "empty".into(),
                    points: vec![],
                    dashed: true,
                },
            ],
            hlines: vec![("UDP GSO/GRO".into(), 80.0)],
        };
        let svg = p.render();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        assert_eq!(
            doc.descendants()
                .filter(|n| n.has_tag_name("polyline"))
                .count(),
            1
        );
        let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
        for t in [
            "a <b> & c",
            "write uring",
            "empty",
            "UDP GSO/GRO",
            "64 B",
            "1 MiB",
        ] {
            assert!(texts.contains(&t), "{t} missing from {texts:?}");
        }
    }

    #[test]
    fn size_labels() {
        assert_eq!(size_label(64.0), "64 B");
        assert_eq!(size_label(4096.0), "4 KiB");
        assert_eq!(size_label(4194304.0), "4 MiB");
    }
}
