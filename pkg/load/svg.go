package load

import (
	"fmt"
	"html"
	"math"
	"os"
	"slices"
	"strings"
)

// SVG draws the run: per second over time, the accepted heartbeats, the
// request latency (p50, p99), the lag (consumer and projections) and the CPU
// of each process with the load average, phases shaded; and the baseline
// against the service round by round. Plain SVG, no dependency: any browser
// shows it.
func (rep *Report) SVG() string {
	const (
		W      = 1200.0
		left   = 80.0
		right  = 330.0 // room for the rounds chart and legends
		panelH = 170.0
		gap    = 44.0
		top    = 110.0 // title, subtitle, first panel's title, then the rotated phase names
		roundH = 150.0 // the rounds chart, below the panels
	)
	pw := W - left - right
	var b strings.Builder
	panels := 4
	H := top + float64(panels)*(panelH+gap) + 20
	if len(rep.Rounds) > 0 {
		H += roundH + 50
	}
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", W, H, W, H)
	b.WriteString(`<rect width="100%" height="100%" fill="white"/>` + "\n")
	title := fmt.Sprintf("devstatus load run %s — %d cores, load average %.1f → %.1f", rep.Started.Format("2006-01-02 15:04 UTC"), rep.Host.Cores, rep.Host.LoadStart, rep.Host.LoadEnd)
	if rep.Label != "" {
		title = rep.Label + ": " + title
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="24" font-size="16" font-weight="bold">%s</text>`+"\n", left, html.EscapeString(title))
	sub := ""
	if len(rep.Rounds) > 0 {
		sub = fmt.Sprintf("single heartbeats: service %.0f/s (whole chain %.0f/s) vs plain net/http handler %.0f/s — ratio %.2f (chain %.2f), median of %d rounds",
			rep.ServiceMedian, rep.ChainMedian, rep.BaselineMedian, rep.RatioMedian, rep.ChainRatioMedian, len(rep.Rounds))
	}
	if g := rep.phase("gateway"); g != nil {
		if sub != "" {
			sub += "; "
		}
		sub += fmt.Sprintf("gateway batches %.0f/s", g.AcceptedPerSec)
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="44" fill="#333">%s</text>`+"\n", left, html.EscapeString(sub))

	s := rep.Series
	tmax := 1.0
	if len(s) > 0 {
		tmax = s[len(s)-1].T
	}
	xOf := func(t float64) float64 { return left + pw*t/tmax }

	type line struct {
		name, color string
		dash        bool
		v           func(Sample) (float64, bool)
	}
	procs := map[string]bool{}
	for _, x := range s {
		for k := range x.CPU {
			procs[k] = true
		}
	}
	procNames := make([]string, 0, len(procs))
	for k := range procs {
		procNames = append(procNames, k)
	}
	slices.Sort(procNames)
	palette := []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"}

	cpuLines := []line{}
	for i, p := range procNames {
		cpuLines = append(cpuLines, line{p + " (cores)", palette[i%len(palette)], false, func(x Sample) (float64, bool) { v, ok := x.CPU[p]; return v, ok }})
	}
	cpuLines = append(cpuLines, line{"load average / cores", "#777", true, func(x Sample) (float64, bool) { return x.Load1 / float64(max(rep.Host.Cores, 1)), true }})

	type panel struct {
		title string
		unit  string
		log   bool
		lines []line
	}
	ps := []panel{
		{"accepted heartbeats per second", "/s", false, []line{
			{"accepted heartbeats/s", "#1f77b4", false, func(x Sample) (float64, bool) { return x.Accepted, true }},
			{"applied by workers/s", "#2ca02c", true, func(x Sample) (float64, bool) { return x.WorkerEventsPerSec, x.WorkerEventsPerSec > 0 }},
			{"projected to Postgres/s", "#ff7f0e", true, func(x Sample) (float64, bool) { return x.ProjectedPerSec, x.ProjectedPerSec > 0 }},
		}},
		{"request latency (answered in each second)", "ms", true, []line{
			{"p50", "#2ca02c", false, func(x Sample) (float64, bool) { return x.P50, x.P50 > 0 }},
			{"p99", "#d62728", false, func(x Sample) (float64, bool) { return x.P99, x.P99 > 0 }},
		}},
		{"lag (events waiting)", "events", false, []line{
			{"worker consumer lag", "#9467bd", false, func(x Sample) (float64, bool) { return x.ConsumerLag, true }},
			{"liveness projection lag", "#ff7f0e", false, func(x Sample) (float64, bool) { return x.LivenessLag, true }},
			{"transitions projection lag", "#8c564b", false, func(x Sample) (float64, bool) { return x.TransitionsLag, true }},
		}},
		{"CPU by process", "cores", false, cpuLines},
	}
	phaseColor := map[string]string{"baseline": "#e8e8e8", "service-max": "#dbe9f6", "sustain": "#e3f2e1", "steady": "#fdf1dc",
		"gateway-max": "#f3e1ef", "gateway": "#efe6f6", "register": "#f6f6f6", "warmup": "#eeeeee", "rewarm-single": "#eeeeee", "rewarm-gateway": "#eeeeee"}
	for pi, p := range ps {
		y0 := top + float64(pi)*(panelH+gap)
		// phase bands
		for i := 0; i < len(s); {
			j := i
			for j+1 < len(s) && s[j+1].Phase == s[i].Phase {
				j++
			}
			t0 := 0.0
			if i > 0 {
				t0 = s[i-1].T
			}
			if c, ok := phaseColor[s[i].Phase]; ok {
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`+"\n", xOf(t0), y0, math.Max(xOf(s[j].T)-xOf(t0), 0.5), panelH, c)
				if pi == 0 && xOf(s[j].T)-xOf(t0) > 30 {
					fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="10" fill="#555" transform="rotate(-30 %.1f %.1f)">%s</text>`+"\n",
						xOf(t0)+2, y0-4, xOf(t0)+2, y0-4, html.EscapeString(s[i].Phase))
				}
			}
			i = j + 1
		}
		// scale
		vmax, vmin := 0.0, math.Inf(1)
		for _, l := range p.lines {
			for _, x := range s {
				if v, ok := l.v(x); ok {
					vmax = math.Max(vmax, v)
					if v > 0 {
						vmin = math.Min(vmin, v)
					}
				}
			}
		}
		if vmax <= 0 {
			vmax = 1
		}
		if math.IsInf(vmin, 1) || vmin > vmax {
			vmin = vmax / 100
		}
		var yOf func(v float64) float64
		var ticks []float64
		if p.log {
			lo := math.Pow(10, math.Floor(math.Log10(math.Max(vmin, 0.01))))
			hi := math.Pow(10, math.Ceil(math.Log10(vmax)))
			if hi <= lo {
				hi = lo * 10
			}
			yOf = func(v float64) float64 {
				v = math.Max(v, lo)
				return y0 + panelH - panelH*(math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))
			}
			for t := lo; t <= hi*1.0001 && len(ticks) < 20; t *= 10 {
				ticks = append(ticks, t)
			}
		} else {
			step := niceStep(vmax / 4)
			hi := math.Ceil(vmax/step) * step
			yOf = func(v float64) float64 { return y0 + panelH - panelH*v/hi }
			for t := 0.0; t <= hi*1.0001 && len(ticks) < 20; t += step {
				ticks = append(ticks, t)
			}
		}
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#999"/>`+"\n", left, y0, pw, panelH)
		for _, t := range ticks {
			y := yOf(t)
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, left+pw, y, y)
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end" font-size="10">%s</text>`+"\n", left-4, y+3, fmtNum(t))
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-weight="bold">%s</text>`+"\n", left, y0-8-boolF(pi == 0)*40, html.EscapeString(p.title+" ("+p.unit+")"))
		// x ticks
		xs := niceStep(tmax / 10)
		for t := 0.0; t <= tmax && t/xs < 30; t += xs {
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10">%s</text>`+"\n", xOf(t), y0+panelH+12, fmtNum(t)+"s")
		}
		for li, l := range p.lines {
			var pts []string
			flush := func() {
				if len(pts) > 1 {
					dash := ""
					if l.dash {
						dash = ` stroke-dasharray="4 3"`
					}
					fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.4"%s points="%s"/>`+"\n", l.color, dash, strings.Join(pts, " "))
				}
				pts = pts[:0]
			}
			for _, x := range s {
				v, ok := l.v(x)
				if !ok {
					flush()
					continue
				}
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", xOf(x.T), yOf(v)))
			}
			flush()
			ly := y0 + 14 + float64(li)*15
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="%s" stroke-width="2"/>`+"\n", left+pw+10, left+pw+30, ly-4, ly-4, l.color)
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="11">%s</text>`+"\n", left+pw+34, ly, html.EscapeString(l.name))
		}
	}
	// rounds chart, below the panels
	if len(rep.Rounds) > 0 {
		x0, y0, w, h := left+30, top+float64(panels)*(panelH+gap)+30, math.Min(pw, 120*float64(len(rep.Rounds))), roundH
		vmax := 0.0
		for _, r := range rep.Rounds {
			vmax = math.Max(vmax, math.Max(r.BaselinePerSec, r.ServicePerSec))
		}
		step := niceStep(vmax / 3)
		hi := math.Ceil(vmax/step) * step
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-weight="bold" font-size="11">closed loop, same generator: /s</text>`+"\n", x0-30, y0-8)
		bw := w / float64(len(rep.Rounds)) / 3.6
		for i, r := range rep.Rounds {
			gx := x0 + float64(i)*w/float64(len(rep.Rounds))
			for k, v := range []float64{r.BaselinePerSec, r.ServicePerSec, r.ChainPerSec} {
				c := []string{"#999", "#1f77b4", "#ff7f0e"}[k]
				bh := h * v / hi
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`+"\n", gx+float64(k)*bw, y0+h-bh, bw-1, bh, c)
			}
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="10" text-anchor="middle">%.2f</text>`+"\n", gx+1.5*bw, y0+h+12, r.ChainRatio)
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="10">%s</text>`+"\n", x0-30, y0+h+12, "ratio")
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="10" fill="#555">grey baseline, blue service, orange whole chain; max %s/s</text>`+"\n", x0-30, y0+h+26, fmtNum(hi))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// WriteSVG writes the plot to path.
func (rep *Report) WriteSVG(path string) error {
	return os.WriteFile(path, []byte(rep.SVG()), 0o644)
}

func boolF(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func niceStep(x float64) float64 {
	if x <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= x {
			return m * p
		}
	}
	return 10 * p
}

func fmtNum(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", math.Round(v/1e5)/10)
	case v >= 1e3:
		return fmt.Sprintf("%gk", math.Round(v/100)/10)
	case v >= 1 || v == 0:
		return fmt.Sprintf("%g", math.Round(v*10)/10)
	default:
		return fmt.Sprintf("%g", v)
	}
}
