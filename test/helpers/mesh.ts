/** Test helper: the built-in example mesh, and edits of it, as validated models. Tests only. */
import { parse, stringify } from 'yaml';
import { EXAMPLE_WARD_YAML } from '../../discovery/example.js';
import type { MeshModel } from '../../discovery/model.js';
import { parseWardYaml } from '../../discovery/ward-yaml.js';

// The example's YAML document, as plain data to mutate.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Doc = Record<string, any>;

export const exampleModel: MeshModel = parseWardYaml(EXAMPLE_WARD_YAML, 'ward.yaml');

/** The example after `mutate` edits its YAML document, validated like a real edit. */
export function editedExample(mutate: (d: Doc) => void): MeshModel {
  const d = parse(EXAMPLE_WARD_YAML) as Doc;
  mutate(d);
  return parseWardYaml(stringify(d), 'ward.yaml');
}
