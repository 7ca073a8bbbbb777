//! Latency pictures as PNG: each purchase's latency (202 to terminal) at the time it was
//! accepted, with the fault windows shaded (`saldo chaos`), and beside it the latency
//! distribution (`saldo bench --plot`).
//!
//! plotters draws text through `ab_glyph` from a font file found at run time (Debian's DejaVu),
//! so building needs no system font library; without a font the plot is drawn without text.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::chaos::{Fault, Kind};
use crate::load::Purchase;

const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a sans-serif font once; false if none was found.
fn font() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        for path in FONTS {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

fn colour(k: Kind) -> RGBColor {
    match k {
        Kind::KillDb => RGBColor(220, 50, 47),
        Kind::KillTopic => RGBColor(203, 75, 22),
        Kind::KillHost => RGBColor(211, 54, 130),
        Kind::KillHandler => RGBColor(108, 113, 196),
        Kind::KillApi => RGBColor(181, 137, 0),
        Kind::Pause => RGBColor(42, 161, 152),
        Kind::Region => RGBColor(38, 139, 210),
    }
}

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A drawing error, naming the file.
fn drawing<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow!("drawing {}: {e:?}", path.display())
}

/// A purchase's latency from 202 to terminal, in seconds.
fn latency_s(p: &Purchase) -> Option<f64> {
    p.latency_ms().map(|l| l as f64 / 1000.0)
}

pub fn timeline(path: &Path, seed: u64, purchases: &[Purchase], faults: &[Fault]) -> Result<()> {
    let root = BitMapBackend::new(path, (1400, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(drawing(path))?;
    let caption = format!("saldo chaos, seed {seed}: latency from 202 to terminal");
    timeline_on(&root, path, &caption, purchases, faults)?;
    root.present().map_err(drawing(path))?;
    Ok(())
}

/// `saldo bench --plot`: each purchase's latency at the time it was accepted, with the region
/// stop shaded (left), and the distribution of latencies (right).
pub fn bench(
    path: &Path,
    title: &str,
    purchases: &[Purchase],
    stops: &[(u64, u64)],
    region: Option<&str>,
) -> Result<()> {
    let faults: Vec<Fault> = stops
        .iter()
        .map(|&(start_ms, healed_ms)| Fault {
            kind: Kind::Region,
            target: region.unwrap_or("a region").to_string(),
            start_ms,
            healed_ms,
            recovered: true,
            detail: String::new(),
        })
        .collect();
    let root = BitMapBackend::new(path, (1600, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(drawing(path))?;
    let (left, right) = root.split_horizontally(1050);
    timeline_on(
        &left,
        path,
        &format!("{title}: latency over time"),
        purchases,
        &faults,
    )?;
    distribution_on(&right, path, "latency distribution", purchases)?;
    root.present().map_err(drawing(path))?;
    Ok(())
}

/// A chart's caption and its two axes (name, and the largest value: each starts at 0).
struct Axes<'a> {
    caption: &'a str,
    x: (&'a str, f64),
    y: (&'a str, f64),
}

impl Axes<'_> {
    /// The chart on `area` with its mesh drawn (captions and labels only when there is a font).
    fn draw<'b, DB: DrawingBackend>(
        &self,
        area: &'b DrawingArea<DB, plotters::coord::Shift>,
        text: bool,
        path: &Path,
    ) -> Result<Chart<'b, DB>> {
        let e = drawing(path);
        let mut builder = ChartBuilder::on(area);
        builder.margin(20);
        if text {
            builder
                .caption(self.caption, ("sans-serif", 24))
                .x_label_area_size(40)
                .y_label_area_size(60);
        }
        let mut chart = builder
            .build_cartesian_2d(0f64..self.x.1, 0f64..self.y.1)
            .map_err(&e)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc(self.x.0).y_desc(self.y.0);
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(&e)?;
        Ok(chart)
    }
}

/// The latencies as a histogram: 40 bins from 0 to the largest.
fn distribution_on<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    path: &Path,
    caption: &str,
    purchases: &[Purchase],
) -> Result<()> {
    const BINS: usize = 40;
    let text = font();
    let e = drawing(path);
    let lat: Vec<f64> = purchases.iter().filter_map(latency_s).collect();
    let x_max = lat.iter().copied().fold(0.01f64, f64::max) * 1.02;
    let width = x_max / BINS as f64;
    let mut counts = [0u32; BINS];
    for l in &lat {
        counts[((l / width) as usize).min(BINS - 1)] += 1;
    }
    let y_max = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let axes = Axes {
        caption,
        x: ("latency (s)", x_max),
        y: ("purchases", y_max),
    };
    let mut chart = axes.draw(area, text, path)?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &c)| {
            let a = i as f64 * width;
            Rectangle::new(
                [(a, 0.0), (a + width * 0.9, c as f64)],
                BLUE.mix(0.6).filled(),
            )
        }))
        .map_err(&e)?;
    Ok(())
}

/// Each purchase's latency at the time it was accepted, over the fault windows.
fn timeline_on<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    path: &Path,
    caption: &str,
    purchases: &[Purchase],
    faults: &[Fault],
) -> Result<()> {
    let text = font();
    let end_ms = purchases
        .iter()
        .filter_map(|p| p.terminal_ms.or(p.accepted_ms))
        .chain(faults.iter().map(|f| f.healed_ms))
        .max()
        .unwrap_or(1000);
    let x_max = (end_ms as f64 / 1000.0).max(1.0) * 1.02;
    let y_max = purchases
        .iter()
        .filter_map(latency_s)
        .fold(1.0f64, f64::max)
        * 1.1;

    let axes = Axes {
        caption,
        x: ("seconds since start", x_max),
        y: ("latency (s)", y_max),
    };
    let mut chart = axes.draw(area, text, path)?;

    draw_faults(&mut chart, faults, y_max, text, path)?;
    draw_purchases(&mut chart, purchases, y_max, text, path)?;
    Ok(())
}

/// The fault windows, shaded by kind, with one legend entry per kind that occurred.
fn draw_faults<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    faults: &[Fault],
    y_max: f64,
    text: bool,
    path: &Path,
) -> Result<()> {
    let e = drawing(path);
    for f in faults {
        let (a, b) = (f.start_ms as f64 / 1000.0, f.healed_ms as f64 / 1000.0);
        let c = colour(f.kind);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(a, 0.0), (b.max(a + 0.05), y_max)],
                c.mix(0.18).filled(),
            )))
            .map_err(&e)?;
    }
    // One legend entry per kind that occurred.
    if text {
        let mut kinds: Vec<Kind> = faults.iter().map(|f| f.kind).collect();
        kinds.sort();
        kinds.dedup();
        for k in kinds {
            let c = colour(k);
            chart
                .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
                .map_err(&e)?
                .label(k.name())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], c.filled()));
        }
    }
    Ok(())
}

/// Each purchase at the time it was accepted: completed, rejected, or (at the top, in red)
/// never terminal; then the legend.
fn draw_purchases<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    purchases: &[Purchase],
    y_max: f64,
    text: bool,
    path: &Path,
) -> Result<()> {
    let e = drawing(path);
    let points = |status: &'static str| {
        purchases
            .iter()
            .filter(move |p| p.status == status)
            .filter_map(move |p| Some((p.accepted_ms? as f64 / 1000.0, latency_s(p)?)))
    };
    let completed = chart
        .draw_series(points("completed").map(|xy| Circle::new(xy, 2, GREEN.mix(0.8).filled())))
        .map_err(&e)?;
    if text {
        completed
            .label("completed")
            .legend(|(x, y)| Circle::new((x + 7, y), 3, GREEN.filled()));
    }
    let rejected = chart
        .draw_series(points("rejected").map(|xy| Circle::new(xy, 2, BLACK.mix(0.6).filled())))
        .map_err(&e)?;
    if text {
        rejected
            .label("rejected (out of stock)")
            .legend(|(x, y)| Circle::new((x + 7, y), 3, BLACK.filled()));
    }
    // Accepted but never terminal: at the top, in red.
    let stuck = chart
        .draw_series(
            purchases
                .iter()
                .filter(|p| p.status == "pending")
                .filter_map(|p| Some((p.accepted_ms? as f64 / 1000.0, y_max * 0.98)))
                .map(|xy| TriangleMarker::new(xy, 5, RED.filled())),
        )
        .map_err(&e)?;
    if text {
        stuck
            .label("not terminal")
            .legend(|(x, y)| TriangleMarker::new((x + 7, y), 4, RED.filled()));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(&e)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_timeline_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.png");
        let p = |n: usize, acc: u64, lat: u64, status: &str| Purchase {
            n,
            key: format!("k{n}"),
            transaction: Some(format!("t{n}")),
            lines: vec![(1, 1)],
            posted_ms: acc,
            accepted_ms: Some(acc),
            terminal_ms: (status != "pending").then_some(acc + lat),
            status: status.into(),
            executed_by: None,
            takeover: false,
            attempts: 1,
            error_count: 0,
            errors: vec![],
            resubmit_same: None,
            refused: None,
        };
        let purchases = vec![
            p(0, 100, 300, "completed"),
            p(1, 2000, 4000, "completed"),
            p(2, 3000, 100, "rejected"),
            p(3, 4000, 0, "pending"),
        ];
        let faults = vec![Fault {
            kind: Kind::KillDb,
            target: "mongodb".into(),
            start_ms: 1500,
            healed_ms: 3500,
            recovered: true,
            detail: String::new(),
        }];
        timeline(&path, 1, &purchases, &faults).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 5_000, "a real picture, not an empty file");

        let bench_path = dir.path().join("b.png");
        bench(
            &bench_path,
            "bench",
            &purchases,
            &[(1500, 3500)],
            Some("northeurope"),
        )
        .unwrap();
        let bytes = std::fs::read(&bench_path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 5_000, "a real picture, not an empty file");
    }
}
