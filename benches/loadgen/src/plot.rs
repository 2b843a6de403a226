//! The picture: p99 latency against delivered messages per second, one colour per server, one
//! line per repetition of the fanout ramp, with the latency bound drawn across.

use plotters::prelude::*;

/// One server's ramps: a list of (deliveries/s, p99 ms, step passed) lines, one per repetition.
pub struct Series {
    pub label: String,
    pub runs: Vec<Vec<(f64, f64, bool)>>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(230, 159, 0),
];

pub fn ramp_svg(
    path: &str,
    series: &[Series],
    bound_ms: f64,
    title: &str,
    caption: &[String],
) -> Result<(), String> {
    let fail = |error: &dyn std::fmt::Display| format!("cannot draw {path}: {error}");
    let points =
        series.iter().flat_map(|s| s.runs.iter().flatten()).map(|&(x, y, _)| (x, y)).collect::<Vec<_>>();
    if points.is_empty() {
        return Err(format!("cannot draw {path}: no ramp data"));
    }
    let x_min = points.iter().map(|p| p.0).fold(f64::MAX, f64::min).max(1.0) / 1.3;
    let x_max = points.iter().map(|p| p.0).fold(0.0, f64::max) * 1.3;
    let y_min = points.iter().map(|p| p.1).fold(f64::MAX, f64::min).max(0.01).min(bound_ms) / 1.5;
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(bound_ms) * 1.5;

    let height = 640 + 22 * caption.len() as u32;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let (upper, lower) = root.split_vertically(620);
    let mut chart = ChartBuilder::on(&upper)
        .caption(title, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((x_min..x_max).log_scale(), (y_min..y_max).log_scale())
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc(
            "delivered messages per second (log scale); dots: steps that passed, crosses: steps that failed",
        )
        .y_desc("p99 latency, ms (log scale)")
        .x_label_formatter(&|x| {
            if *x >= 1e6 { format!("{:.1}M", x / 1e6) } else { format!("{:.0}k", x / 1e3) }
        })
        .y_label_formatter(&|y| if *y >= 10.0 { format!("{y:.0}") } else { format!("{y:.1}") })
        .draw()
        .map_err(|e| fail(&e))?;
    chart
        .draw_series(LineSeries::new(vec![(x_min, bound_ms), (x_max, bound_ms)], RED.stroke_width(1)))
        .map_err(|e| fail(&e))?
        .label(format!("p99 bound, {bound_ms} ms"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(1)));
    for (i, server) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        for (j, run) in server.runs.iter().enumerate() {
            let mut run = run.clone();
            run.sort_by(|a, b| a.0.total_cmp(&b.0));
            let line = chart
                .draw_series(LineSeries::new(run.iter().map(|&(x, y, _)| (x, y)), color.stroke_width(2)))
                .map_err(|e| fail(&e))?;
            if j == 0 {
                line.label(format!("{} ({} runs)", server.label, server.runs.len()))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            }
            // Passing steps are dots, failing ones (p99 over the bound, or a loss) crosses.
            chart
                .draw_series(
                    run.iter().filter(|p| p.2).map(|&(x, y, _)| Circle::new((x, y), 3, color.filled())),
                )
                .map_err(|e| fail(&e))?;
            chart
                .draw_series(
                    run.iter()
                        .filter(|p| !p.2)
                        .map(|&(x, y, _)| Cross::new((x, y), 5, color.stroke_width(2))),
                )
                .map_err(|e| fail(&e))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, line) in caption.iter().enumerate() {
        lower
            .draw(&Text::new(line.clone(), (20, 4 + 22 * i as i32), ("sans-serif", 14)))
            .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

/// The soak's picture: the server's resident memory and the sockets it holds, minute by minute,
/// with the load's window and the flatness bound over its last half.
pub struct RssPlot {
    /// (minutes since the load began, MiB); negative while the members connect.
    pub rss_mib: Vec<(f64, f64)>,
    /// (minutes, slab slots from `/stats`).
    pub sockets: Vec<(f64, f64)>,
    pub load_minutes: f64,
    /// The most RSS the last half of the load may reach and still count as flat.
    pub tolerance_mib: f64,
}

pub fn rss_svg(path: &str, plot: &RssPlot, title: &str) -> Result<(), String> {
    let fail = |error: &dyn std::fmt::Display| format!("cannot draw {path}: {error}");
    if plot.rss_mib.is_empty() {
        return Err(format!("cannot draw {path}: no samples"));
    }
    let x_min = plot.rss_mib.iter().map(|p| p.0).fold(0.0, f64::min);
    let x_max = plot.rss_mib.iter().map(|p| p.0).fold(plot.load_minutes, f64::max) + 0.2;
    let y_max = plot.rss_mib.iter().map(|p| p.1).fold(plot.tolerance_mib, f64::max) * 1.15;
    let sockets_max = plot.sockets.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(x_min..x_max, 0.0..y_max)
        .map_err(|e| fail(&e))?
        .set_secondary_coord(x_min..x_max, 0.0..sockets_max);
    chart
        .configure_mesh()
        .x_desc("minutes since the load began (before 0: connecting the members)")
        .y_desc("server RSS, MiB")
        .draw()
        .map_err(|e| fail(&e))?;
    chart.configure_secondary_axes().y_desc("sockets held (slab slots)").draw().map_err(|e| fail(&e))?;
    let blue = COLORS[0];
    let orange = COLORS[1];
    chart
        .draw_series(LineSeries::new(plot.rss_mib.iter().copied(), blue.stroke_width(2)))
        .map_err(|e| fail(&e))?
        .label("server RSS (left)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2)));
    chart
        .draw_series(plot.rss_mib.iter().map(|&point| Circle::new(point, 2, blue.filled())))
        .map_err(|e| fail(&e))?;
    let half = plot.load_minutes / 2.0;
    chart
        .draw_series(LineSeries::new(
            vec![(half, plot.tolerance_mib), (plot.load_minutes, plot.tolerance_mib)],
            RED,
        ))
        .map_err(|e| fail(&e))?
        .label("flat bound over the last half")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    for at in [0.0, half, plot.load_minutes] {
        chart
            .draw_series(LineSeries::new(vec![(at, 0.0), (at, y_max)], BLACK.mix(0.3)))
            .map_err(|e| fail(&e))?;
    }
    chart
        .draw_secondary_series(LineSeries::new(plot.sockets.iter().copied(), orange.stroke_width(1)))
        .map_err(|e| fail(&e))?
        .label("sockets held (right)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], orange.stroke_width(1)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}
