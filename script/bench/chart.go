package main

import (
	"fmt"
	"image/color"
	"math"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// drawChart draws time to ready as grouped bars (a group per workload, a bar per mode, the
// median with the min–max range as a whisker) on a log scale, with each workload's physical
// limit as a dashed line across its group, and writes it as a PNG. rill's bars say how their
// time compares with stargz-snapshotter's counterpart mode, when it ran.
func drawChart(path string, sums []summary, linkText string) error {
	var workloads, modes []string
	for _, s := range sums {
		if !slices.Contains(workloads, s.workload) {
			workloads = append(workloads, s.workload)
		}
		if !slices.Contains(modes, s.mode) {
			modes = append(modes, s.mode)
		}
	}
	if len(sums) == 0 {
		return nil
	}
	p := plot.New()
	p.Title.Text = "Time from pull to ready, cold (median; whiskers: min–max)"
	p.X.Label.Text = linkText
	p.Y.Label.Text = "seconds (log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = secondTicks{}
	p.Legend.Top = true

	lowest, highest := math.Inf(1), 0.0
	for _, s := range sums {
		lowest, highest = min(lowest, s.ready.min), max(highest, s.ready.max)
		if s.limit > 0 {
			lowest = min(lowest, s.limit.Seconds())
		}
	}
	base := math.Pow(10, math.Floor(math.Log10(max(lowest, 1e-3)*0.8)))
	p.Y.Min = base
	p.Y.Max = highest * 6 // room for the labels and the legend

	const groupWidth = 0.8
	barWidth := groupWidth / float64(len(modes))
	for mi, mode := range modes {
		col := plotutil.Color(mi)
		var legend plot.Thumbnailer
		for gi, w := range workloads {
			i := slices.IndexFunc(sums, func(s summary) bool { return s.workload == w && s.mode == mode })
			if i < 0 {
				continue
			}
			s := sums[i]
			x0 := float64(gi) - groupWidth/2 + float64(mi)*barWidth
			bar, err := plotter.NewPolygon(plotter.XYs{{X: x0, Y: base}, {X: x0 + barWidth*0.9, Y: base},
				{X: x0 + barWidth*0.9, Y: s.ready.med}, {X: x0, Y: s.ready.med}})
			if err != nil {
				return err
			}
			bar.Color = col
			bar.LineStyle.Width = 0
			p.Add(bar)
			legend = bar
			xm := x0 + barWidth*0.45
			whisker, err := plotter.NewLine(plotter.XYs{{X: xm, Y: s.ready.min}, {X: xm, Y: s.ready.max}})
			if err != nil {
				return err
			}
			whisker.Color = color.Black
			p.Add(whisker)
			text := fmt.Sprintf("%.1fs", s.ready.med)
			if c := stargzCounterpart(mode); c != "" {
				if r := readyRatio(sums, s, c); r > 0 {
					text += fmt.Sprintf("\n%.2f× %s", r, c)
				}
			}
			label, err := plotter.NewLabels(plotter.XYLabels{
				XYs: []plotter.XY{{X: x0, Y: s.ready.max * 1.08}}, Labels: []string{text},
			})
			if err != nil {
				return err
			}
			label.TextStyle[0].Font.Size = vg.Points(7)
			p.Add(label)
		}
		if legend != nil {
			p.Legend.Add(mode, legend)
		}
	}
	limitShown := false
	for gi, w := range workloads {
		i := slices.IndexFunc(sums, func(s summary) bool { return s.workload == w })
		if i < 0 || sums[i].limit <= 0 {
			continue
		}
		l := sums[i].limit.Seconds()
		line, err := plotter.NewLine(plotter.XYs{{X: float64(gi) - 0.45, Y: l}, {X: float64(gi) + 0.45, Y: l}})
		if err != nil {
			return err
		}
		line.Color = color.RGBA{R: 200, A: 255}
		line.Width = vg.Points(1.5)
		line.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		p.Add(line)
		if !limitShown {
			p.Legend.Add("physical limit", line)
			limitShown = true
		}
	}
	p.NominalX(workloads...)
	p.X.Min, p.X.Max = -0.6, float64(len(workloads))-0.4
	p.Legend.ThumbnailWidth = vg.Points(14)
	if err := p.Save(vg.Length(70+45*len(workloads))*vg.Millimeter, 120*vg.Millimeter, path); err != nil {
		return fmt.Errorf("writing the chart %s: %w", path, err)
	}
	return nil
}

// secondTicks marks 1-2-5 steps of seconds on a log axis.
type secondTicks struct{}

func (secondTicks) Ticks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	for decade := math.Pow(10, math.Floor(math.Log10(lo))); decade <= hi; decade *= 10 {
		for _, m := range []float64{1, 2, 5} {
			if v := decade * m; v >= lo && v <= hi {
				ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', -1, 64)})
			}
		}
	}
	return ticks
}
