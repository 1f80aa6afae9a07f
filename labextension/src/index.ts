/**
 * spindel-jupyter's JupyterLab extension: the "Spindel" panel, a status bar
 * item and palette commands, live over the hub's WebSocket.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { refreshIcon } from '@jupyterlab/ui-components';

import { SpindelConnection } from './connection';
import { spindelIcon } from './icon';
import { SpindelPanel } from './panel';
import { SpindelStatus } from './status';

export { SpindelConnection } from './connection';

namespace CommandIDs {
  export const showPanel = 'spindel:show-panel';
  export const reconnect = 'spindel:reconnect';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'spindel-jupyter:plugin',
  description: 'The Spindel panel: live peers and topics of the spindel-jupyter hub.',
  autoStart: true,
  optional: [ILayoutRestorer, INotebookTracker, ICommandPalette, IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    tracker: INotebookTracker | null,
    palette: ICommandPalette | null,
    statusBar: IStatusBar | null
  ): void => {
    const connection = new SpindelConnection({ serverSettings: app.serviceManager.serverSettings });
    const panel = new SpindelPanel({ connection, tracker });
    app.shell.add(panel, 'left', { rank: 600 });
    restorer?.add(panel, panel.id);

    app.commands.addCommand(CommandIDs.showPanel, {
      label: 'Spindel: Show panel',
      caption: 'Show the Spindel panel: connected peers and synced topics',
      icon: args => (args.isPalette ? undefined : spindelIcon),
      execute: () => {
        app.shell.activateById(panel.id);
        // After the command palette (if that is where this came from) has handed focus back.
        window.requestAnimationFrame(() => panel.focusFirst());
      }
    });
    app.commands.addCommand(CommandIDs.reconnect, {
      label: 'Spindel: Reconnect',
      caption: 'Reconnect to the Spindel hub now',
      icon: args => (args.isPalette ? undefined : refreshIcon),
      execute: () => connection.reconnect()
    });
    for (const command of [CommandIDs.showPanel, CommandIDs.reconnect]) {
      palette?.addItem({ command, category: 'Spindel' });
    }

    if (statusBar) {
      const item = new SpindelStatus(connection, () => {
        void app.commands.execute(CommandIDs.showPanel);
      });
      statusBar.registerStatusItem('spindel-jupyter:status', {
        item,
        align: 'left',
        rank: 50
      });
    }

    connection.connect();
  }
};

export default plugin;
