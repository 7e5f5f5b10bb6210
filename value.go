package consullock

import (
	"encoding/json"
	"fmt"
	"os"
	"time"
)

// pythonTime is how python-consul-lock writes datetime.now() with str().
const pythonTime = "2006-01-02 15:04:05.000000"

// Holder is what DefaultValue stores under a held key: when and where the lock
// was taken. LockedAt is the field python-consul-lock writes; Host and PID
// are added for operators and ignored by Python readers.
type Holder struct {
	LockedAt string `json:"locked_at"`
	Host     string `json:"host,omitempty"`
	PID      int    `json:"pid,omitempty"`
}

// DefaultValue returns the JSON that python-consul-lock stores,
// {"locked_at": "2006-01-02 15:04:05.000000"} in local time, with the holder's
// host name and process id added.
func DefaultValue() []byte {
	b, _ := json.Marshal(Holder{LockedAt: time.Now().Format(pythonTime), Host: host, PID: os.Getpid()})
	return b
}

// host is looked up once, when the package is initialised, not on every
// acquire; it is never changed.
var host, _ = os.Hostname()

// ParseHolder decodes a lock value written by consullock or by
// python-consul-lock. Unknown fields are ignored; a value that is not a JSON
// object is an error wrapping ErrConsul (a value from Consul that consullock
// cannot use), and the caller should show it raw.
func ParseHolder(value []byte) (Holder, error) {
	var h Holder
	if err := json.Unmarshal(value, &h); err != nil {
		return Holder{}, fmt.Errorf("%w: the lock value is not a holder's JSON object: %w", ErrConsul, err)
	}
	return h, nil
}
