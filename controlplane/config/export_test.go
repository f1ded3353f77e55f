package config

import (
	"context"

	"go.yaml.in/yaml/v3"
)

// For the external tests: the two ways Parse computes what it decodes.
var (
	Settings      = settings
	ViperSettings = viperSettings
	DecodeFile    = decodeFile
)

// DecodeMapping is one YAML document as Parse hands it to Settings; nil for an empty one.
func DecodeMapping(data []byte) (map[string]any, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil || len(root.Content) == 0 {
		return nil, err
	}
	cv := converter{ctx: context.Background(), budget: 2*len(data) + 1024}
	return cv.mapping(root.Content[0])
}
