// Command burst sends n GET requests to one URL at once, each on its own
// connection, and prints one line: statuses, how long it took to send them
// all, and latency percentiles. bench/load.sh uses it for the cold start.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

func main() {
	n := flag.Int("n", 1000, "requests, all at once")
	timeout := flag.Duration("timeout", 30*time.Second, "per request")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: burst [-n 1000] URL")
		os.Exit(2)
	}
	url := flag.Arg(0)
	log.SetFlags(0)

	client := &http.Client{
		Timeout: *timeout,
		Transport: &http.Transport{
			MaxIdleConnsPerHost: *n,
			DisableCompression:  true,
		},
	}
	var (
		wg       sync.WaitGroup
		start    = make(chan struct{})
		mu       sync.Mutex
		statuses = map[int]int{}
		lat      = make([]time.Duration, 0, *n)
		sent     []time.Time
	)
	for range *n {
		wg.Go(func() {
			<-start
			t0 := time.Now()
			status := 0
			resp, err := client.Get(url)
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				status = resp.StatusCode
			}
			d := time.Since(t0)
			mu.Lock()
			statuses[status]++
			lat = append(lat, d)
			sent = append(sent, t0)
			mu.Unlock()
		})
	}
	begin := time.Now()
	close(start)
	wg.Wait()
	total := time.Since(begin)

	slices.Sort(lat)
	slices.SortFunc(sent, func(a, b time.Time) int { return a.Compare(b) })
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p/100*float64(len(lat))))] }
	st := make([]string, 0, len(statuses))
	codes := make([]int, 0, len(statuses))
	for c := range statuses {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	for _, c := range codes {
		st = append(st, fmt.Sprintf("%dx%d", statuses[c], c))
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/1e6) }
	fmt.Printf("requests=%d statuses=%s send_spread_ms=%s total_ms=%s p50_ms=%s p99_ms=%s max_ms=%s\n",
		*n, strings.Join(st, ","), ms(sent[len(sent)-1].Sub(sent[0])), ms(total), ms(pct(50)), ms(pct(99)), ms(lat[len(lat)-1]))
	if statuses[http.StatusOK] != *n {
		os.Exit(1)
	}
}
