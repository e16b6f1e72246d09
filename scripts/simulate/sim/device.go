package sim

import (
	"math"
	"math/rand/v2"
	"sort"
	"strconv"

	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// Device is one simulated device: the state a real one carries between
// uplinks. Its clock is simulated device time, not wall time: each uplink
// covers one heartbeat interval (± jitter), so a load test sending every
// 100 ms still looks like a fleet that reports every 15–60 minutes, and its
// activity seconds add up to that interval. Not safe for concurrent use.
type Device struct {
	// ID is the device ID the uplinks carry.
	ID string

	rng        *rand.Rand
	rebootProb float64
	config     *nbiotv1.DeviceConfig
	hasBattery bool

	booted   bool   // false until the first uplink: the first one reports power-on
	count    uint32 // uplink_count since boot
	boots    uint32 // Reboot.count: boots since the device was flashed
	reason   nbiotv1.Reboot_Reason
	interval uint32 // seconds covered by the last uplink

	temp, baseTemp float64
	lat, lon       float64
	batteryMV      float64
	sinceFix       uint32 // seconds since the last GNSS attempt
	sinceScan      uint32 // seconds since the last wifi scan
	nearby         []apTemplate
}

type apTemplate struct {
	bssid   [6]byte
	rssi    float64
	channel uint32
}

// Reboot reasons a running device may report (power-on is only the first boot).
var rebootReasons = []nbiotv1.Reboot_Reason{
	nbiotv1.Reboot_REASON_WATCHDOG, nbiotv1.Reboot_REASON_FAULT, nbiotv1.Reboot_REASON_FIRMWARE_UPDATE,
	nbiotv1.Reboot_REASON_BROWNOUT, nbiotv1.Reboot_REASON_SOFTWARE,
}

// Channels a scan reports: the three usual 2.4 GHz channels and a few 5 GHz ones.
var wifiChannels = []uint32{1, 6, 11, 1, 6, 11, 36, 40, 44, 48, 149, 157}

// MaxAPs is the most wifi APs one uplink carries.
const MaxAPs = 10

// NewDevice returns a device whose uplinks are fully determined by seed.
// rebootProb is the chance that the device reboots before a given uplink.
func NewDevice(id string, seed uint64, rebootProb float64) *Device {
	rng := rand.New(rand.NewPCG(seed, 0x6e62696f74)) // "nbiot"
	d := &Device{ID: id, rng: rng, rebootProb: rebootProb}
	heartbeat := []uint32{900, 1800, 3600}[rng.IntN(3)]
	gnss := []uint32{0, 3600, 21600}[rng.IntN(3)]
	wifi := []uint32{0, 900, 3600}[rng.IntN(3)]
	d.config = &nbiotv1.DeviceConfig{
		HeartbeatInterval: &heartbeat,
		HwVersion:         []string{"nrf9160-r2", "nrf9151-r1"}[rng.IntN(2)],
		FwVersion:         "1.4.2",
		GnssInterval:      &gnss,
		WifiScanInterval:  &wifi,
	}
	d.hasBattery = rng.Float64() < 0.7
	d.batteryMV = 3500 + 200*rng.Float64()
	d.baseTemp = 5 + 20*rng.Float64()
	d.temp = d.baseTemp
	d.lat = 47 + 8*rng.Float64() // somewhere in central Europe
	d.lon = 5 + 15*rng.Float64()
	d.nearby = make([]apTemplate, MaxAPs)
	for i := range d.nearby {
		ap := &d.nearby[i]
		for j := range ap.bssid {
			ap.bssid[j] = byte(rng.UintN(256))
		}
		ap.bssid[0] &^= 0x03 // unicast, globally administered, as real APs' OUIs are
		ap.rssi = -45 - 45*rng.Float64()
		ap.channel = wifiChannels[rng.IntN(len(wifiChannels))]
	}
	d.reason = nbiotv1.Reboot_REASON_POWER_ON
	return d
}

// Interval is the number of seconds the last uplink's activity covers: the
// time since the device's previous uplink, or since boot for the first
// uplink after a (re)boot.
func (d *Device) Interval() uint32 { return d.interval }

// Next advances the device by one uplink interval and returns the uplink it
// sends. The first uplink after a boot carries the reboot reason and the
// configuration, and uplink_count restarts at 1.
func (d *Device) Next() *nbiotv1.Uplink {
	heartbeat := d.config.GetHeartbeatInterval()
	var elapsed uint32
	switch {
	case !d.booted:
		d.boot(nbiotv1.Reboot_REASON_POWER_ON)
		elapsed = 30 + d.rng.Uint32N(heartbeat/2) // switched on a while ago
	case d.rng.Float64() < d.rebootProb:
		d.boot(rebootReasons[d.rng.IntN(len(rebootReasons))])
		elapsed = 30 + d.rng.Uint32N(heartbeat) // rebooted since the previous uplink
	default:
		jitter := int64(heartbeat) / 20 // ±5 %: RTC drift, network registration time
		elapsed = uint32(int64(heartbeat) + d.rng.Int64N(2*jitter+1) - jitter)
	}

	u := &nbiotv1.Uplink{DeviceId: d.ID}
	d.count++
	u.UplinkCount = d.count
	if d.reason != nbiotv1.Reboot_REASON_UNSPECIFIED {
		u.Reboot = &nbiotv1.Reboot{Reason: d.reason, Count: d.boots}
		u.Config = cloneConfig(d.config)
		d.reason = nbiotv1.Reboot_REASON_UNSPECIFIED
	}

	act := &nbiotv1.Activity{Modem: 3 + d.rng.Uint32N(38), Other: d.rng.Uint32N(21)}
	d.sinceFix += elapsed
	if gi := d.config.GetGnssInterval(); gi > 0 && d.sinceFix >= gi {
		d.sinceFix = 0
		act.Gnss = 15 + d.rng.Uint32N(76)
		if d.rng.Float64() < 0.85 { // no fix indoors now and then
			u.Gnss = d.fix()
		}
	}
	d.sinceScan += elapsed
	if wi := d.config.GetWifiScanInterval(); wi > 0 && d.sinceScan >= wi {
		d.sinceScan = 0
		act.Wifi = 2 + d.rng.Uint32N(7)
		u.WifiAps = d.scan()
	}
	busy := act.Modem + act.Gnss + act.Wifi + act.Other
	if busy > elapsed {
		elapsed = busy
	}
	act.Sleep = elapsed - busy
	u.Activity = act
	d.interval = elapsed

	u.Temperature = d.temperature(elapsed)
	if d.hasBattery {
		d.batteryMV = math.Max(2900, d.batteryMV-float64(elapsed)/3600*d.rng.Float64())
		mv := uint32(d.batteryMV)
		u.BatteryMv = &mv
	}
	return u
}

// boot restarts the device: uplink_count restarts and the next uplink says why.
func (d *Device) boot(reason nbiotv1.Reboot_Reason) {
	d.booted = true
	d.boots++
	d.count = 0
	d.reason = reason
	if reason == nbiotv1.Reboot_REASON_FIRMWARE_UPDATE {
		d.config.FwVersion = bumpPatch(d.config.GetFwVersion())
	}
	if reason == nbiotv1.Reboot_REASON_BROWNOUT {
		d.batteryMV += 150 // the supply recovered, or the battery was replaced
	}
}

// temperature drifts as a mean-reverting random walk around the device's
// site temperature, in steps that grow with the time since the last uplink.
func (d *Device) temperature(elapsed uint32) *float32 {
	step := math.Sqrt(float64(elapsed) / 900)
	d.temp += 0.1*(d.baseTemp-d.temp) + 0.4*step*d.rng.NormFloat64()
	t := float32(math.Round(d.temp*100) / 100)
	return &t
}

func (d *Device) fix() *nbiotv1.Gnss {
	d.lat += 0.0002 * d.rng.NormFloat64() // a device that mostly stays put
	d.lon += 0.0002 * d.rng.NormFloat64()
	return &nbiotv1.Gnss{Lat: d.lat, Lon: d.lon, AccuracyM: float32(3 + 47*d.rng.Float64()*d.rng.Float64())}
}

// scan reports 0–10 of the device's nearby APs, strongest first, as real
// scans list them.
func (d *Device) scan() []*nbiotv1.WifiAp {
	n := d.rng.IntN(MaxAPs + 1)
	aps := make([]*nbiotv1.WifiAp, 0, n)
	for _, i := range d.rng.Perm(len(d.nearby))[:n] {
		t := d.nearby[i]
		rssi := math.Max(-100, math.Min(-30, t.rssi+3*d.rng.NormFloat64()))
		aps = append(aps, &nbiotv1.WifiAp{Bssid: append([]byte(nil), t.bssid[:]...), Rssi: int32(rssi), Channel: t.channel})
	}
	sort.Slice(aps, func(i, j int) bool { return aps[i].Rssi > aps[j].Rssi })
	return aps
}

func cloneConfig(c *nbiotv1.DeviceConfig) *nbiotv1.DeviceConfig {
	hb, gi, wi := c.GetHeartbeatInterval(), c.GetGnssInterval(), c.GetWifiScanInterval()
	return &nbiotv1.DeviceConfig{
		HeartbeatInterval: &hb, HwVersion: c.GetHwVersion(), FwVersion: c.GetFwVersion(),
		GnssInterval: &gi, WifiScanInterval: &wi,
	}
}

// bumpPatch turns "1.4.2" into "1.4.3"; anything else gets "+1".
func bumpPatch(v string) string {
	i := len(v)
	for i > 0 && v[i-1] >= '0' && v[i-1] <= '9' {
		i--
	}
	if i == len(v) || len(v)-i > 6 {
		return v + "+1"
	}
	n := 0
	for _, c := range v[i:] {
		n = n*10 + int(c-'0')
	}
	return v[:i] + strconv.Itoa(n+1)
}
