/**
 * The status bar item: "Spindel: 3 peers" or "Spindel: offline"; a click shows the panel.
 */
import { Widget } from '@lumino/widgets';

import { SpindelConnection } from './connection';
import { spindelIcon } from './icon';

export class SpindelStatus extends Widget {
  constructor(connection: SpindelConnection, onActivate: () => void) {
    super({ node: document.createElement('button') });
    this.addClass('jp-SpindelStatus');
    this.node.setAttribute('type', 'button');
    this.node.append(
      spindelIcon.element({ tag: 'span', elementSize: 'small', className: 'jp-SpindelStatus-icon' })
    );
    this._label = document.createElement('span');
    this._label.className = 'jp-SpindelStatus-label';
    this.node.append(this._label);
    this.node.addEventListener('click', onActivate);
    this._connection = connection;
    connection.changed.connect(this._update, this);
    this._update();
  }

  dispose(): void {
    this._connection.changed.disconnect(this._update, this);
    super.dispose();
  }

  private _update(): void {
    const { status, peers } = this._connection;
    let text: string;
    if (status === 'connected') {
      text = `Spindel: ${peers.length} peer${peers.length === 1 ? '' : 's'}`;
    } else if (status === 'connecting') {
      text = 'Spindel: connecting…';
    } else {
      text = 'Spindel: offline';
    }
    this._label.textContent = text;
    this.node.dataset.status = status;
    const kernels = peers.filter(p => p.kind === 'kernel').length;
    this.node.title =
      status === 'connected'
        ? `Connected to the Spindel hub: ${kernels} kernel${kernels === 1 ? '' : 's'}, ${peers.length - kernels} other. Click to show the panel.`
        : `Not connected to the Spindel hub${this._connection.lastError ? ` (${this._connection.lastError})` : ''}. Click to show the panel.`;
  }

  private _connection: SpindelConnection;
  private _label: HTMLElement;
}
