/**
 * spindel-jupyter's JupyterLab extension: the "Spindel" panel, a status bar
 * item and palette commands, live over the hub's WebSocket.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, InputDialog, Notification } from '@jupyterlab/apputils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { refreshIcon } from '@jupyterlab/ui-components';

import { SpindelConnection } from './connection';
import { spindelIcon } from './icon';
import { SpindelPanel } from './panel';
import { SpindelStatus } from './status';
import { FollowedNotebooks, WorkspaceActions } from './workspaces';

export { SpindelConnection } from './connection';

namespace CommandIDs {
  export const showPanel = 'spindel:show-panel';
  export const reconnect = 'spindel:reconnect';
  export const follow = 'spindel:workspace-follow';
  export const fork = 'spindel:workspace-fork';
  export const merge = 'spindel:workspace-merge';
  export const claim = 'spindel:workspace-claim';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'spindel-jupyter:plugin',
  description: 'The Spindel panel: live peers and topics of the spindel-jupyter hub.',
  autoStart: true,
  optional: [ILayoutRestorer, INotebookTracker, ICommandPalette, IStatusBar, IDocumentManager],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    tracker: INotebookTracker | null,
    palette: ICommandPalette | null,
    statusBar: IStatusBar | null,
    docManager: IDocumentManager | null
  ): void => {
    const connection = new SpindelConnection({ serverSettings: app.serviceManager.serverSettings });
    const actions = new WorkspaceActions({ connection, docManager, tracker });
    const panel = new SpindelPanel({ connection, tracker, actions });
    if (tracker) {
      new FollowedNotebooks(connection, tracker);
    }
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

    /** The workspace named in the command's args, else the selected row's, else one asked for. */
    const workspaceFor = async (
      args: Record<string, unknown>,
      verb: string,
      forksOnly = false
    ): Promise<string | null> => {
      if (typeof args.name === 'string' && args.name) {
        return args.name;
      }
      const candidates = connection.workspaces.filter(w => !forksOnly || w.fork_of).map(w => w.name).sort();
      const selected = panel.selectedWorkspace;
      if (selected && candidates.includes(selected)) {
        return selected;
      }
      if (!candidates.length) {
        Notification.warning(`Spindel: no ${forksOnly ? 'forks' : 'workspaces'} to ${verb}`, { autoClose: 5000 });
        return null;
      }
      const answer = await InputDialog.getItem({
        title: `Spindel: ${verb} a workspace`,
        label: forksOnly ? 'Fork to merge back:' : 'Workspace:',
        items: candidates,
        okLabel: verb.charAt(0).toUpperCase() + verb.slice(1)
      });
      return answer.button.accept && answer.value ? answer.value : null;
    };
    const workspaceCommands: [string, string, string, boolean, (name: string) => Promise<void>][] = [
      [CommandIDs.follow, 'follow', 'Spindel: Follow workspace…', false, name => actions.follow(name)],
      [CommandIDs.fork, 'fork', 'Spindel: Fork workspace…', false, name => actions.fork(name)],
      [CommandIDs.merge, 'merge', 'Spindel: Merge fork back…', true, name => actions.merge(name)],
      [CommandIDs.claim, 'claim', 'Spindel: Claim workspace…', false, name => actions.claim(name)]
    ];
    for (const [id, verb, label, forksOnly, run] of workspaceCommands) {
      app.commands.addCommand(id, {
        label,
        caption: `${label.replace('…', '')}: the selected workspace in the Spindel panel, or one you pick`,
        isEnabled: () => connection.status === 'connected',
        execute: async args => {
          const name = await workspaceFor(args as Record<string, unknown>, verb, forksOnly);
          if (name) {
            await run(name);
          }
        }
      });
    }

    for (const command of [
      CommandIDs.showPanel,
      CommandIDs.reconnect,
      CommandIDs.follow,
      CommandIDs.fork,
      CommandIDs.merge,
      CommandIDs.claim
    ]) {
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
