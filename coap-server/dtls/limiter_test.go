package dtls

import (
	"errors"
	"net"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) Now() time.Time         { return c.t }
func (c *clock) Add(d time.Duration)    { c.t = c.t.Add(d) }
func addr(ip string, port int) net.Addr { return &net.UDPAddr{IP: net.ParseIP(ip), Port: port} }

func TestLimiter(t *testing.T) {
	tests := []struct {
		name string
		cfg  LimitConfig
		run  func(t *testing.T, l *Limiter, c *clock)
	}{
		{"per-IP in flight, any port", LimitConfig{PerIPInFlight: 2, PerIPBurst: 100}, func(t *testing.T, l *Limiter, c *clock) {
			must(t, l.Acquire(addr("10.0.0.1", 1)), nil)
			must(t, l.Acquire(addr("10.0.0.1", 2)), nil)
			must(t, l.Acquire(addr("10.0.0.1", 3)), ErrPerIPInFlight)
			must(t, l.Acquire(addr("10.0.0.2", 1)), nil) // another IP is not affected
			l.Release(addr("10.0.0.1", 1))
			must(t, l.Acquire(addr("10.0.0.1", 4)), nil)
		}},
		{"per-IP rate refills with time", LimitConfig{PerIPRate: 2, PerIPBurst: 2, PerIPInFlight: 100}, func(t *testing.T, l *Limiter, c *clock) {
			must(t, l.Acquire(addr("10.0.0.1", 1)), nil)
			must(t, l.Acquire(addr("10.0.0.1", 2)), nil)
			must(t, l.Acquire(addr("10.0.0.1", 3)), ErrPerIPRate)
			c.Add(500 * time.Millisecond) // one token at 2/s
			must(t, l.Acquire(addr("10.0.0.1", 4)), nil)
			must(t, l.Acquire(addr("10.0.0.1", 5)), ErrPerIPRate)
		}},
		{"global in flight", LimitConfig{InFlight: 2}, func(t *testing.T, l *Limiter, c *clock) {
			must(t, l.Acquire(addr("10.0.0.1", 1)), nil)
			must(t, l.Acquire(addr("10.0.0.2", 1)), nil)
			must(t, l.Acquire(addr("10.0.0.3", 1)), ErrInFlight)
			l.Release(addr("10.0.0.2", 1))
			must(t, l.Acquire(addr("10.0.0.3", 1)), nil)
			if l.InFlight() != 2 {
				t.Errorf("InFlight = %d", l.InFlight())
			}
		}},
		{"IP table bounded, idle entries swept", LimitConfig{MaxIPs: 2, PerIPBurst: 1, PerIPRate: 1}, func(t *testing.T, l *Limiter, c *clock) {
			must(t, l.Acquire(addr("10.0.0.1", 1)), nil)
			must(t, l.Acquire(addr("10.0.0.2", 1)), nil)
			must(t, l.Acquire(addr("10.0.0.3", 1)), ErrTableFull) // both busy
			l.Release(addr("10.0.0.1", 1))
			c.Add(2 * time.Second) // 10.0.0.1 idle and refilled: swept
			must(t, l.Acquire(addr("10.0.0.3", 1)), nil)
			if len(l.ips) != 2 {
				t.Errorf("%d IPs tracked, want 2", len(l.ips))
			}
		}},
		{"IPv4-mapped IPv6 is the same IP", LimitConfig{PerIPInFlight: 1}, func(t *testing.T, l *Limiter, c *clock) {
			must(t, l.Acquire(addr("192.0.2.1", 1)), nil)
			must(t, l.Acquire(addr("::ffff:192.0.2.1", 2)), ErrPerIPInFlight)
		}},
		{"IPv6: one /64 is one key", LimitConfig{PerIPInFlight: 1}, func(t *testing.T, l *Limiter, c *clock) {
			must(t, l.Acquire(addr("2001:db8:1:2::1", 1)), nil)
			must(t, l.Acquire(addr("2001:db8:1:2:ffff:ffff:ffff:fffe", 1)), ErrPerIPInFlight) // same /64
			must(t, l.Acquire(addr("2001:db8:1:3::1", 1)), nil)                               // next /64
			l.Release(addr("2001:db8:1:2:abcd::9", 7))                                        // any address of the /64 releases
			must(t, l.Acquire(addr("2001:db8:1:2::5", 1)), nil)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &clock{t: time.Unix(1e9, 0)}
			tt.cfg.Now = c.Now
			tt.run(t, NewLimiter(tt.cfg), c)
		})
	}
}

func must(t *testing.T, got, want error) {
	t.Helper()
	if !errors.Is(got, want) {
		t.Fatalf("Acquire = %v, want %v", got, want)
	}
}
