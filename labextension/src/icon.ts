import { LabIcon } from '@jupyterlab/ui-components';

import spindelSvg from '../style/icons/spindel.svg';

/** A spindle wound with thread: the panel's tab, the status item and the palette. */
export const spindelIcon = new LabIcon({ name: 'spindel-jupyter:spindel', svgstr: spindelSvg });
